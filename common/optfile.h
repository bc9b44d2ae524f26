/* optfile.h: a subcommand's options from a YAML file (kbridge --config).
 *
 * The file is read into an argument vector that opt_parse_with() (optparse.h)
 * parses like the command line, so a value in a file gets the same checks and
 * the same errors as the flag, with the file and line in front. Apart from the
 * parser so that only the CLI links libyaml. */
#ifndef KB_OPTFILE_H
#define KB_OPTFILE_H

#include "optparse.h"

/* Options from a file: the YAML mapping at path, whose keys are the command's
 * flag names without "--" and whose values are what the flag takes: a scalar; for
 * a flag without value, true or false; for a repeatable flag a sequence, or a
 * mapping {K: V} standing for the values "K=V". A flag given on the command line
 * replaces the file's value (a repeatable flag: the whole list). Result: an
 * argument vector (--name value ...) for opt_parse_with(), owned by *out, freed
 * with opt_file_free(). Returns 0, or -1 with a one-line err naming the file, the
 * line and the key (an unknown key, a value of the wrong shape, a YAML error). */
int opt_file_load(const struct opt_cmd *cmd, const char *path, struct opt_file *out, char *err,
                  size_t errlen);
void opt_file_free(struct opt_file *f);

/* The file's line of value, a string opt_parse_with() stored from f (the same
 * pointer, as OPT_STRING and OPT_CUSTOM options keep it), or 0 when value came
 * from somewhere else (the command line). f may be NULL. */
int opt_file_line(const struct opt_file *f, const char *value);

#endif
