/*
 * cli.h — pieces shared by the chatlog subcommands (the files in cli/).
 *
 * Every subcommand is a function `int cmd_NAME(int argc, char **argv)` whose
 * argv[0] is the subcommand's name and whose return value is the process exit
 * status:
 *
 *   CLI_OK       0  success (and, for verify/recover, nothing wrong found)
 *   CLI_PROBLEM  1  the command ran and found problems in the data
 *   CLI_USAGE    2  bad command line; one line on stderr says what
 *   CLI_FAIL     3  the command could not run (open failed, I/O error, ...)
 *
 * Errors go to stderr as one line, "chatlog CMD: reason". Engine codes are
 * rendered with cl_strerror().
 */
#ifndef CHATLOG_CLI_H
#define CHATLOG_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

enum { CLI_OK = 0, CLI_PROBLEM = 1, CLI_USAGE = 2, CLI_FAIL = 3 };

int cmd_ls(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_recover(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_gen(int argc, char **argv);

/* ---- errors (cli/common.c) ---- */

/* Print "chatlog CMD: <formatted>" and a newline to stderr. */
void cli_err(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- argument parsing (cli/common.c) ----
 *
 * A deliberately small parser: options are long ("--name VALUE" or
 * "--name=VALUE", or a flag "--name"), may come before or after the
 * positional arguments, and "--" ends the options. "-h" is "--help". */

typedef struct cli_opt {
    const char *name; /* without the leading "--" */
    int takes_value;
    const char *value; /* out: the value, or "" for a flag that was given */
} cli_opt;

/* Parse argv[1..argc) into opts (a table ending with name == NULL) and the
 * positional arguments (pointers into argv, at most max_pos of them; *npos
 * gets the count). Returns CLI_OK, or prints the reason and returns
 * CLI_USAGE. */
int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts,
              const char **pos, int max_pos, int *npos);

/* The value of option name, or NULL when it was not given. */
const char *cli_opt_get(const cli_opt *opts, const char *name);

/* Parse a decimal unsigned integer in [min, max] (a whole string, no sign, no
 * spaces; a K/M/G suffix multiplies by 1024^n when allow_suffix). Prints the
 * reason and returns CLI_USAGE on error. */
int cli_parse_u64(const char *cmd, const char *what, const char *s,
                  uint64_t min, uint64_t max, int allow_suffix,
                  uint64_t *out);

/* ---- opening a data directory (cli/common.c) ---- */

/* Open (or, for gen, create) the log in dir with opt, whose log_fn this
 * sets: engine lines at WARN and above go to stderr prefixed with
 * "chatlog CMD: engine:", except that an ERROR line logged by a failing
 * log_open is folded into the one-line reason printed for the failure.
 * Returns CLI_OK, or prints the reason and returns CLI_FAIL. Only one log
 * may be open through this at a time (the prefix lives in a static). */
int cli_log_open(const char *cmd, const char *dir, log_options *opt,
                 log_t **out);

/* Check that dir looks like a data directory (it holds a MANIFEST) so that a
 * typo never makes log_open create a fresh log, then open it with default
 * options (read-only when read_only) through cli_log_open. Prints the reason
 * and returns CLI_FAIL on error. */
int cli_open(const char *cmd, const char *dir, int read_only, log_t **out);

/* 20-digit zero-padded offset, the way segment files are named. */
void cli_fmt_offset(char out[21], uint64_t offset);

/* ---- JSON output (cli/json.c) ---- */

/* Write s[0..len) as a JSON string, quotes included. Quote, backslash and
 * control characters are escaped (\n, \t, ... or \u00XX), as are DEL, U+2028
 * and U+2029; valid UTF-8 passes through; each byte of an invalid UTF-8
 * sequence (bad lead or continuation byte, overlong form, surrogate, beyond
 * U+10FFFF, cut short) becomes \ufffd. */
void json_write_str(FILE *f, const uint8_t *s, size_t len);

/* Write the decoded protobuf body of a record of type `type` as a JSON
 * object. Returns 0, or -1 when the bytes do not decode as that type's
 * message (nothing is written then). */
int json_write_body(FILE *f, int type, const uint8_t *body, size_t len);

/* Lowercase name of a record type ("message", "conv_created", ...), or NULL
 * for a value outside enum rec_type. */
const char *rec_type_name(int type);

/* ---- synthetic workload (cli/gen_text.c) ---- */

/* xoshiro256** seeded through splitmix64: fast, and the same sequence for
 * the same seed on every machine, which makes `chatlog gen` reproducible. */
typedef struct cli_rng {
    uint64_t s[4];
} cli_rng;

void rng_seed(cli_rng *r, uint64_t seed);
uint64_t rng_next(cli_rng *r);
/* Uniform in [0, n); n > 0. */
uint64_t rng_below(cli_rng *r, uint64_t n);
/* Uniform in [0, 1). */
double rng_unit(cli_rng *r);

/* GEN_TEXT_MAX bytes always suffice for one generated text, NUL included. */
#define GEN_TEXT_MAX 8192

/* A chat message text: mostly short lines ("ok", "see you at 5", emoji),
 * some sentences, a few long paragraphs, ~2% with a URL; UTF-8, some with
 * quotes, backslashes and newlines. Writes a NUL-terminated string into
 * buf[GEN_TEXT_MAX] and returns its length. */
size_t gen_text(cli_rng *r, char *buf);
/* A short caption (possibly empty) for a media message, its URL and type. */
size_t gen_media(cli_rng *r, char *caption, char *url, size_t url_cap,
                 const char **media_type);
/* A group conversation title, into buf[GEN_TEXT_MAX]. */
size_t gen_title(cli_rng *r, char *buf);

#endif
