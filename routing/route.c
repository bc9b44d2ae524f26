/* route.c: placeholder until the route rules land (next commit). */
#include "route.h"
