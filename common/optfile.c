/* optfile.c: options from a YAML file, turned into an argument vector for
 * opt_parse_with() (see optfile.h). Apart from optparse.c so that a program
 * without options files (the agent) does not link libyaml. */
#include "optfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

static int file_push(struct opt_file *f, int *cap, const char *s, size_t len, int line) {
  if (f->argc + 1 >= *cap) {
    int ncap = *cap ? *cap * 2 : 16;
    char **nv = realloc(f->argv, (size_t)ncap * sizeof *nv);
    int *nl = realloc(f->line, (size_t)ncap * sizeof *nl);
    if (nv) f->argv = nv;
    if (nl) f->line = nl;
    if (!nv || !nl) return -1;
    *cap = ncap;
  }
  char *copy = malloc(len + 1);
  if (!copy) return -1;
  memcpy(copy, s, len);
  copy[len] = '\0';
  f->line[f->argc] = line;
  f->argv[f->argc++] = copy;
  f->argv[f->argc] = NULL;
  return 0;
}

static const char *node_text(yaml_node_t *n) {
  return (const char *)n->data.scalar.value;
}

/* "K=V[,K=V...]" from a mapping of scalars into buf; -1 if a value is no scalar. */
static int join_pairs(yaml_document_t *doc, yaml_node_t *map, const char *sep, char *buf,
                      size_t len, int *bad_line) {
  size_t used = 0;
  buf[0] = '\0';
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(doc, p->key), *v = yaml_document_get_node(doc, p->value);
    if (!k || !v || k->type != YAML_SCALAR_NODE || v->type != YAML_SCALAR_NODE) {
      *bad_line = (int)(k ? k->start_mark.line : map->start_mark.line) + 1;
      return -1;
    }
    int n = snprintf(buf + used, len - used, "%s%s=%s", used ? sep : "", node_text(k), node_text(v));
    if (n < 0 || (size_t)n >= len - used) {
      *bad_line = (int)k->start_mark.line + 1;
      return -1;
    }
    used += (size_t)n;
  }
  return 0;
}

int opt_file_load(const struct opt_cmd *cmd, const char *path, struct opt_file *out, char *err,
                  size_t errlen) {
  memset(out, 0, sizeof *out);
  out->path = path;
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  yaml_parser_t parser;
  yaml_document_t doc;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, fp);
  if (!yaml_parser_load(&parser, &doc)) {
    snprintf(err, errlen, "%s:%zu: not valid YAML (%s)", path, parser.problem_mark.line + 1,
             parser.problem ? parser.problem : "parse error");
    yaml_parser_delete(&parser);
    fclose(fp);
    return -1;
  }
  yaml_parser_delete(&parser);
  fclose(fp);
  int rc = -1, cap = 0;
  char buf[4096];
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root == NULL) { /* an empty file: no options */
    rc = 0;
    goto done;
  }
  if (root->type != YAML_MAPPING_NODE) {
    snprintf(err, errlen, "%s:%zu: expected a mapping of option names to values (such as "
             "\"timeout: 60\")", path, root->start_mark.line + 1);
    goto done;
  }
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(&doc, p->key), *v = yaml_document_get_node(&doc, p->value);
    int line = (int)k->start_mark.line + 1;
    if (k->type != YAML_SCALAR_NODE) {
      snprintf(err, errlen, "%s:%d: expected an option name as key", path, line);
      goto done;
    }
    const char *name = node_text(k);
    const struct opt_def *o = opt_find(cmd, name, strlen(name));
    if (o == NULL || strcmp(name, "config") == 0) {
      snprintf(err, errlen, "%s:%d: \"%s\" is not an option of `kbridge %s` (keys are its flag "
               "names without \"--\"; see kbridge %s --help)", path, line, name, cmd->name,
               cmd->name);
      goto done;
    }
    snprintf(buf, sizeof buf, "--%s", name);
    if (o->type == OPT_FLAG) {
      const char *t = v->type == YAML_SCALAR_NODE ? node_text(v) : "";
      if (strcmp(t, "true") != 0 && strcmp(t, "false") != 0) {
        snprintf(err, errlen, "%s:%d: %s: expected true or false", path, line, name);
        goto done;
      }
      if (strcmp(t, "true") == 0 && file_push(out, &cap, buf, strlen(buf), line) < 0) goto oom;
      continue;
    }
    int bad = line;
    if (v->type == YAML_SCALAR_NODE || (v->type == YAML_MAPPING_NODE && !opt_repeatable(o))) {
      const char *val = v->type == YAML_SCALAR_NODE ? node_text(v) : NULL;
      char joined[2048];
      if (!val) {
        if (join_pairs(&doc, v, ",", joined, sizeof joined, &bad) < 0) {
          snprintf(err, errlen, "%s:%d: %s: expected a mapping of names to plain values", path,
                   bad, name);
          goto done;
        }
        val = joined;
      }
      if (file_push(out, &cap, buf, strlen(buf), line) < 0 ||
          file_push(out, &cap, val, strlen(val), line) < 0)
        goto oom;
    } else if (v->type == YAML_SEQUENCE_NODE && opt_repeatable(o)) {
      for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *e = yaml_document_get_node(&doc, *it);
        if (!e || e->type != YAML_SCALAR_NODE) {
          snprintf(err, errlen, "%s:%d: %s: expected a list of %s", path,
                   e ? (int)e->start_mark.line + 1 : line, name, opt_metavar(o));
          goto done;
        }
        if (file_push(out, &cap, buf, strlen(buf), (int)e->start_mark.line + 1) < 0 ||
            file_push(out, &cap, node_text(e), strlen(node_text(e)), (int)e->start_mark.line + 1) < 0)
          goto oom;
      }
    } else if (v->type == YAML_MAPPING_NODE) { /* repeatable: one K=V per entry */
      for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
        yaml_node_t *kk = yaml_document_get_node(&doc, q->key);
        yaml_node_t *vv = yaml_document_get_node(&doc, q->value);
        if (!kk || !vv || kk->type != YAML_SCALAR_NODE || vv->type != YAML_SCALAR_NODE) {
          snprintf(err, errlen, "%s:%d: %s: expected a mapping of names to plain values", path,
                   kk ? (int)kk->start_mark.line + 1 : line, name);
          goto done;
        }
        int n = snprintf(buf, sizeof buf, "%s=%s", node_text(kk), node_text(vv));
        if (n < 0 || (size_t)n >= sizeof buf) {
          snprintf(err, errlen, "%s:%d: %s: value too long", path, (int)kk->start_mark.line + 1,
                   name);
          goto done;
        }
        char flag[80];
        snprintf(flag, sizeof flag, "--%s", name);
        if (file_push(out, &cap, flag, strlen(flag), (int)kk->start_mark.line + 1) < 0 ||
            file_push(out, &cap, buf, strlen(buf), (int)kk->start_mark.line + 1) < 0)
          goto oom;
      }
    } else {
      snprintf(err, errlen, "%s:%d: %s: expected %s%s", path, line, name,
               opt_repeatable(o) ? "a value or a list of " : "one value, ", opt_metavar(o));
      goto done;
    }
  }
  rc = 0;
  goto done;
oom:
  snprintf(err, errlen, "%s: out of memory", path);
done:
  yaml_document_delete(&doc);
  if (rc < 0) opt_file_free(out);
  return rc;
}

void opt_file_free(struct opt_file *f) {
  for (int i = 0; i < f->argc; i++) free(f->argv[i]);
  free(f->argv);
  free(f->line);
  f->argv = NULL;
  f->line = NULL;
  f->argc = 0;
}


int opt_file_line(const struct opt_file *f, const char *value) {
  for (int i = 0; f && i < f->argc; i++)
    if (f->argv[i] == value) return f->line[i];
  return 0;
}
