/*
 * json.c — JSON rendering of records for `chatlog dump`.
 *
 * Record bodies are bytes from disk, so nothing here trusts them: a string
 * field may hold any bytes (protobuf-c does not check UTF-8), and a body may
 * not decode at all. Strings are written as valid JSON whatever they hold
 * (see json_write_str in cli.h); a body that does not decode is reported by
 * the return value and the caller prints its bytes in hex instead.
 */
#include "cli.h"

#include <inttypes.h>
#include <string.h>

#include "batch.h"
#include "log.pb-c.h"

const char *rec_type_name(int type)
{
    switch (type) {
    case REC_MESSAGE: return "message";
    case REC_CONV_CREATED: return "conv_created";
    case REC_MEMBERS_CHANGED: return "members_changed";
    case REC_READ_POINTER: return "read_pointer";
    case REC_EDIT: return "edit";
    case REC_DELETE: return "delete";
    case REC_NOOP: return "noop";
    }
    return NULL;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one.
 * Follows the Unicode "well-formed byte sequences" table: no overlong forms,
 * no surrogates (U+D800..DFFF), nothing above U+10FFFF. *cp gets the code
 * point. */
static size_t utf8_seq(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    size_t len;
    uint32_t v;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    v = (v << 6) | (s[1] & 0x3F);
    for (size_t i = 2; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return len;
}

void json_write_str(FILE *f, const uint8_t *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    putc('"', f);
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_seq(s + i, len - i, &cp);
        if (n == 0) {
            fputs("\\ufffd", f);
            i++;
            continue;
        }
        if (n > 1) {
            if (cp == 0x2028 || cp == 0x2029)
                fprintf(f, "\\u%04" PRIx32, cp);
            else
                fwrite(s + i, 1, n, f);
            i += n;
            continue;
        }
        i++;
        switch (cp) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (cp < 0x20 || cp == 0x7F) {
                fputs("\\u00", f);
                putc(hex[cp >> 4], f);
                putc(hex[cp & 15], f);
            } else {
                putc((int)cp, f);
            }
        }
    }
    putc('"', f);
}

/* protobuf-c hands strings out NUL-terminated, without their length, so a
 * string with an embedded NUL byte is shown up to that byte. */
static void write_cstr(FILE *f, const char *s)
{
    json_write_str(f, (const uint8_t *)(s ? s : ""), s ? strlen(s) : 0);
}

static void write_u64_array(FILE *f, const uint64_t *v, size_t n)
{
    putc('[', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%" PRIu64, i ? "," : "", v[i]);
    putc(']', f);
}

/* An enum as its lowercase name, or as a number for values this build does
 * not know (proto3 enums are open). */
static void write_enum(FILE *f, int v, const char *const *names, int nnames)
{
    if (v >= 0 && v < nnames)
        fprintf(f, "\"%s\"", names[v]);
    else
        fprintf(f, "%d", v);
}

int json_write_body(FILE *f, int type, const uint8_t *body, size_t len)
{
    switch (type) {
    case REC_MESSAGE: {
        Chatlog__Log__V1__MessageBody *m =
            chatlog__log__v1__message_body__unpack(NULL, len, body);
        if (!m)
            return -1;
        fputs("{\"text\":", f);
        write_cstr(f, m->text);
        fputs(",\"media_url\":", f);
        write_cstr(f, m->media_url);
        fputs(",\"media_type\":", f);
        write_cstr(f, m->media_type);
        putc('}', f);
        chatlog__log__v1__message_body__free_unpacked(m, NULL);
        return 0;
    }
    case REC_CONV_CREATED: {
        static const char *const kinds[] = {"unspecified", "direct", "group"};
        Chatlog__Log__V1__ConvCreated *m =
            chatlog__log__v1__conv_created__unpack(NULL, len, body);
        if (!m)
            return -1;
        fputs("{\"kind\":", f);
        write_enum(f, (int)m->kind, kinds, 3);
        fputs(",\"members\":", f);
        write_u64_array(f, m->members, m->n_members);
        fputs(",\"title\":", f);
        write_cstr(f, m->title);
        putc('}', f);
        chatlog__log__v1__conv_created__free_unpacked(m, NULL);
        return 0;
    }
    case REC_MEMBERS_CHANGED: {
        Chatlog__Log__V1__MembersChanged *m =
            chatlog__log__v1__members_changed__unpack(NULL, len, body);
        if (!m)
            return -1;
        fputs("{\"add\":", f);
        write_u64_array(f, m->add, m->n_add);
        fputs(",\"remove\":", f);
        write_u64_array(f, m->remove, m->n_remove);
        putc('}', f);
        chatlog__log__v1__members_changed__free_unpacked(m, NULL);
        return 0;
    }
    case REC_READ_POINTER: {
        static const char *const kinds[] = {"unspecified", "delivered",
                                            "read"};
        Chatlog__Log__V1__ReadPointer *m =
            chatlog__log__v1__read_pointer__unpack(NULL, len, body);
        if (!m)
            return -1;
        fputs("{\"kind\":", f);
        write_enum(f, (int)m->kind, kinds, 3);
        putc('}', f);
        chatlog__log__v1__read_pointer__free_unpacked(m, NULL);
        return 0;
    }
    case REC_EDIT: {
        Chatlog__Log__V1__Edit *m =
            chatlog__log__v1__edit__unpack(NULL, len, body);
        if (!m)
            return -1;
        fputs("{\"text\":", f);
        write_cstr(f, m->text);
        putc('}', f);
        chatlog__log__v1__edit__free_unpacked(m, NULL);
        return 0;
    }
    case REC_DELETE: {
        Chatlog__Log__V1__Delete *m =
            chatlog__log__v1__delete__unpack(NULL, len, body);
        if (!m)
            return -1;
        fputs("{}", f);
        chatlog__log__v1__delete__free_unpacked(m, NULL);
        return 0;
    }
    case REC_NOOP:
        fputs("{}", f); /* no body: a Raft leader's first batch of its term */
        return len == 0 ? 0 : -1;
    }
    return -1;
}
