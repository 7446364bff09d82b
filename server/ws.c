/*
 * ws.c — the WebSocket (RFC 6455) codec, server side.
 *
 * Frame layout (RFC 6455 §5.2), as a client sends it:
 *
 *   byte 0: FIN(1) RSV1(1) RSV2(1) RSV3(1) opcode(4)
 *   byte 1: MASK(1) len7(7)
 *   len7 == 126: 2-byte big-endian length follows
 *   len7 == 127: 8-byte big-endian length follows (its MSB must be 0)
 *   4-byte masking key (MASK must be 1: every client frame is masked)
 *   payload, byte i XORed with key[i % 4]
 *
 * The exact rule for "valid", checked in this order as bytes arrive so that
 * an error is reported as early as the bytes allow (1002 unless noted):
 *   - RSV bits are 0 (we negotiate no extension);
 *   - the opcode is one of 0, 1, 2, 8, 9, 10;
 *   - a control frame (opcode >= 8) has FIN set and len7 <= 125;
 *   - a continuation frame continues a message, a text/binary frame does
 *     not start while another message is unfinished (control frames may be
 *     interleaved between the fragments of a message);
 *   - MASK is set;
 *   - a 64-bit length has its MSB clear; non-minimal length encodings are
 *     accepted (the RFC forbids them, but nothing is gained by refusing);
 *   - the message so far plus this frame's length is at most max_message,
 *     checked on the header, before any byte of the payload is read or any
 *     memory allocated (1009);
 *   - a close payload is empty or >= 2 bytes, its code one that may be sent
 *     on the wire (§7.4: 1000-1003, 1007-1011, 3000-4999) and its reason
 *     valid UTF-8 (1007);
 *   - a text message is valid UTF-8, checked incrementally as payload
 *     bytes arrive (an invalid byte fails at once, before the message is
 *     complete; a code point may be split across frames and reads), and
 *     must not end inside a code point (1007).
 *
 * Memory: the parser holds no buffer between messages. A single-frame data
 * message whose payload is entirely in the caller's buffer is delivered from
 * that buffer (unmasked in place, no copy). Otherwise payload bytes are
 * appended to a reassembly buffer that grows geometrically, never beyond
 * max_message, and is freed as soon as the message is delivered, so an idle
 * connection costs only sizeof(ws_parser) and the < 14 bytes of a partial
 * frame header that the caller keeps.
 */
#include "ws.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* The first allocation of a reassembly buffer; it then doubles. */
#define WS_MSG_MIN_CAP 256

/* ---- UTF-8 (RFC 3629) ----
 * The incremental checker's state is 0 between code points. Inside one it
 * holds the number of continuation bytes still expected (bits 0-7) and the
 * range the next one must fall in (lo in bits 8-15, hi in bits 16-23): the
 * second byte's range is what excludes overlongs, surrogates and code
 * points above U+10FFFF. UTF8_REJECT is sticky. */
#define UTF8_REJECT 0xFFFFFFFFu

static uint32_t utf8_need(uint32_t need, uint32_t lo, uint32_t hi)
{
    return need | lo << 8 | hi << 16;
}

static uint32_t utf8_step(uint32_t st, const uint8_t *s, size_t n)
{
    size_t i = 0;
    if (st == UTF8_REJECT)
        return st;
    while (i < n) {
        if (st == 0) {
            /* Fast path: 8 ASCII bytes at a time. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i == n)
                break;
            uint8_t c = s[i++];
            if (c < 0x80)
                continue;
            else if (c >= 0xC2 && c <= 0xDF)
                st = utf8_need(1, 0x80, 0xBF);
            else if (c == 0xE0)
                st = utf8_need(2, 0xA0, 0xBF); /* no overlong */
            else if (c == 0xED)
                st = utf8_need(2, 0x80, 0x9F); /* no surrogate */
            else if (c >= 0xE1 && c <= 0xEF)
                st = utf8_need(2, 0x80, 0xBF);
            else if (c == 0xF0)
                st = utf8_need(3, 0x90, 0xBF); /* no overlong */
            else if (c >= 0xF1 && c <= 0xF3)
                st = utf8_need(3, 0x80, 0xBF);
            else if (c == 0xF4)
                st = utf8_need(3, 0x80, 0x8F); /* <= U+10FFFF */
            else
                return UTF8_REJECT;
        } else {
            uint8_t c = s[i++];
            uint32_t need = st & 0xFF, lo = (st >> 8) & 0xFF, hi = st >> 16;
            if (c < lo || c > hi)
                return UTF8_REJECT;
            st = need == 1 ? 0 : utf8_need(need - 1, 0x80, 0xBF);
        }
    }
    return st;
}

int ws_utf8_valid(const uint8_t *s, size_t len)
{
    return utf8_step(0, s, len) == 0;
}

/* ---- handshake ---- */

static int is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '+' || c == '/';
}

int ws_accept_key(const char *key, size_t key_len, char out[29])
{
    /* 16 bytes in base64: 22 significant characters and "==". The spare
     * low bits of the 22nd character are not checked (decoders ignore
     * them). */
    if (!key || key_len != 24 || key[22] != '=' || key[23] != '=')
        return -1;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64(key[i]))
            return -1;
    uint8_t in[24 + sizeof WS_GUID - 1];
    memcpy(in, key, 24);
    memcpy(in + 24, WS_GUID, sizeof WS_GUID - 1);
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(in, sizeof in, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return -1;
    if (EVP_EncodeBlock((unsigned char *)out, md, 20) != 28)
        return -1;
    out[28] = '\0';
    return 0;
}

/* ---- parser ---- */

void ws_parser_init(ws_parser *p, size_t max_message)
{
    memset(p, 0, sizeof *p);
    p->max_message = max_message;
}

void ws_parser_free(ws_parser *p)
{
    free(p->msg);
    p->msg = NULL;
    p->msg_len = p->msg_cap = 0;
    p->msg_opcode = 0;
    p->in_frame = 0;
}

int ws_parser_idle(const ws_parser *p)
{
    return !p->in_frame && p->msg_opcode == 0 && p->msg == NULL;
}

/* XOR s[0..n) with the key, starting at key byte phase. */
static void unmask(uint8_t *s, size_t n, const uint8_t key[4], uint64_t phase)
{
    uint8_t k[8];
    for (int i = 0; i < 8; i++)
        k[i] = key[(phase + (uint64_t)i) & 3];
    uint64_t k64;
    memcpy(&k64, k, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        w ^= k64;
        memcpy(s + i, &w, 8);
    }
    for (; i < n; i++)
        s[i] ^= k[i & 7];
}

static int close_code_valid(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

/* Make room for n more bytes of the message; the caller has checked that
 * msg_len + n <= max_message. */
static int msg_reserve(ws_parser *p, size_t n)
{
    size_t need = p->msg_len + n;
    if (need <= p->msg_cap)
        return 0;
    size_t cap = p->msg_cap ? p->msg_cap : WS_MSG_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > p->max_message)
        cap = p->max_message; /* >= need */
    uint8_t *m = realloc(p->msg, cap);
    if (!m)
        return -WS_CLOSE_INTERNAL;
    p->msg = m;
    p->msg_cap = cap;
    return 0;
}

static void msg_reset(ws_parser *p)
{
    free(p->msg);
    p->msg = NULL;
    p->msg_len = p->msg_cap = 0;
    p->msg_opcode = 0;
    p->utf8_state = 0;
}

static const uint8_t empty_payload[1];

/* Checks of the first header byte, possible before the rest arrives. */
static int check_byte0(const ws_parser *p, uint8_t b0)
{
    int op = b0 & 0x0F;
    if (b0 & 0x70)
        return -WS_CLOSE_PROTOCOL; /* RSV1-3 */
    switch (op) {
    case WS_OP_CONT:
        if (p->msg_opcode == 0)
            return -WS_CLOSE_PROTOCOL;
        break;
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (p->msg_opcode != 0)
            return -WS_CLOSE_PROTOCOL;
        break;
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        if (!(b0 & 0x80))
            return -WS_CLOSE_PROTOCOL; /* fragmented control frame */
        break;
    default:
        return -WS_CLOSE_PROTOCOL;
    }
    return 0;
}

/* The frame just read completely: deliver what it completes. */
static int frame_done(ws_parser *p, ws_msg_cb cb, void *arg)
{
    p->in_frame = 0;
    int op = p->frame_opcode;
    if (op >= WS_OP_CLOSE) {
        const uint8_t *d = p->ctl;
        size_t n = p->ctl_len;
        int code = 0;
        if (op == WS_OP_CLOSE) {
            code = WS_CLOSE_NO_STATUS;
            if (n >= 2) {
                code = p->ctl[0] << 8 | p->ctl[1];
                if (!close_code_valid(code))
                    return -WS_CLOSE_PROTOCOL;
                d += 2;
                n -= 2;
                if (!ws_utf8_valid(d, n))
                    return -WS_CLOSE_INVALID_DATA;
            }
        }
        return cb(arg, op, d, n, code);
    }
    if (!p->frame_fin)
        return 0;
    if (p->msg_opcode == WS_OP_TEXT && p->utf8_state != 0)
        return -WS_CLOSE_INVALID_DATA; /* ends inside a code point */
    /* Deliver from the buffer, then drop it: an idle parser holds none. */
    uint8_t *m = p->msg;
    size_t n = p->msg_len;
    op = p->msg_opcode;
    p->msg = NULL;
    msg_reset(p);
    int rc = cb(arg, op, m ? m : empty_payload, n, 0);
    free(m);
    return rc;
}

ssize_t ws_parse(ws_parser *p, uint8_t *buf, size_t len, ws_msg_cb cb,
                 void *arg)
{
    size_t pos = 0;
    for (;;) {
        if (!p->in_frame) {
            size_t avail = len - pos;
            if (avail == 0)
                break;
            uint8_t *h = buf + pos;
            int rc = check_byte0(p, h[0]);
            if (rc)
                return rc;
            if (avail < 2)
                break;
            int op = h[0] & 0x0F, fin = h[0] >> 7;
            unsigned len7 = h[1] & 0x7F;
            if (op >= WS_OP_CLOSE && len7 > WS_MAX_CONTROL_PAYLOAD)
                return -WS_CLOSE_PROTOCOL;
            if (op == WS_OP_CLOSE && len7 == 1)
                return -WS_CLOSE_PROTOCOL;
            if (!(h[1] & 0x80))
                return -WS_CLOSE_PROTOCOL; /* client frames are masked */
            size_t hlen = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
            uint64_t plen = len7;
            if (len7 == 127 && avail >= 3 && (h[2] & 0x80))
                return -WS_CLOSE_PROTOCOL; /* 64-bit length, MSB set */
            if (avail < hlen + 4)
                break;
            if (len7 == 126) {
                plen = (uint64_t)h[2] << 8 | h[3];
            } else if (len7 == 127) {
                plen = 0;
                for (int i = 0; i < 8; i++)
                    plen = plen << 8 | h[2 + i];
            }
            if (op < WS_OP_CLOSE && plen > p->max_message - p->msg_len)
                return -WS_CLOSE_TOO_BIG;
            memcpy(p->mask, h + hlen, 4);
            hlen += 4;
            pos += hlen;

            if (op != WS_OP_CONT && op < WS_OP_CLOSE && fin &&
                plen <= len - pos) {
                /* A whole message in the caller's buffer: no copy. */
                uint8_t *d = buf + pos;
                size_t n = (size_t)plen;
                unmask(d, n, p->mask, 0);
                if (op == WS_OP_TEXT && !ws_utf8_valid(d, n))
                    return -WS_CLOSE_INVALID_DATA;
                pos += n;
                rc = cb(arg, op, n ? d : empty_payload, n, 0);
                if (rc)
                    return rc;
                continue;
            }
            p->in_frame = 1;
            p->frame_opcode = op;
            p->frame_fin = fin;
            p->frame_left = plen;
            p->frame_pos = 0;
            if (op >= WS_OP_CLOSE) {
                p->ctl_len = 0;
            } else if (op != WS_OP_CONT) {
                p->msg_opcode = op;
                p->msg_len = 0;
                p->utf8_state = 0;
            }
        }

        /* Payload bytes of the current frame. */
        size_t n = len - pos;
        if (n > p->frame_left)
            n = (size_t)p->frame_left;
        if (n == 0 && p->frame_left > 0)
            break;
        uint8_t *d = buf + pos;
        unmask(d, n, p->mask, p->frame_pos);
        if (p->frame_opcode >= WS_OP_CLOSE) {
            memcpy(p->ctl + p->ctl_len, d, n);
            p->ctl_len += n;
        } else if (n > 0) {
            if (p->msg_opcode == WS_OP_TEXT) {
                p->utf8_state = utf8_step(p->utf8_state, d, n);
                if (p->utf8_state == UTF8_REJECT)
                    return -WS_CLOSE_INVALID_DATA;
            }
            int rc = msg_reserve(p, n);
            if (rc)
                return rc;
            memcpy(p->msg + p->msg_len, d, n);
            p->msg_len += n;
        }
        pos += n;
        p->frame_left -= n;
        p->frame_pos += n;
        if (p->frame_left == 0) {
            int rc = frame_done(p, cb, arg);
            if (rc)
                return rc;
        }
    }
    return (ssize_t)pos;
}

/* ---- encoding ---- */

size_t ws_frame_header(uint8_t out[10], int opcode, uint64_t payload_len)
{
    out[0] = (uint8_t)(0x80 | (opcode & 0x0F));
    if (payload_len < 126) {
        out[1] = (uint8_t)payload_len;
        return 2;
    }
    if (payload_len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
    return 10;
}

size_t ws_close_frame(uint8_t out[2 + WS_MAX_CONTROL_PAYLOAD], int code,
                      const char *reason)
{
    out[0] = 0x80 | WS_OP_CLOSE;
    /* Codes that must not appear on the wire (1005 "no status", 1006
     * "abnormal", 1015 "TLS failure", and anything outside 1000-4999) are
     * sent as an empty close payload, which the peer reads as 1005. */
    if (code < 1000 || code > 4999 || code == WS_CLOSE_NO_STATUS ||
        code == 1006 || code == 1015) {
        out[1] = 0;
        return 2;
    }
    out[2] = (uint8_t)(code >> 8);
    out[3] = (uint8_t)code;
    /* The longest prefix of reason that fits in 123 bytes and ends on a
     * code point boundary: the reason must be valid UTF-8 on the wire. */
    size_t cut = 0;
    if (reason) {
        const uint8_t *r = (const uint8_t *)reason;
        uint32_t st = 0;
        for (size_t i = 0; i < WS_MAX_CONTROL_PAYLOAD - 2 && r[i]; i++) {
            st = utf8_step(st, r + i, 1);
            if (st == UTF8_REJECT)
                break;
            if (st == 0)
                cut = i + 1;
        }
        memcpy(out + 4, reason, cut);
    }
    out[1] = (uint8_t)(2 + cut);
    return 4 + cut;
}
