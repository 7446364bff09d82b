/*
 * ws.h — the WebSocket (RFC 6455) codec: handshake key, frame parsing with
 * message reassembly, frame encoding. No I/O; the connection code feeds it
 * bytes and writes what it encodes.
 *
 * Why not libwslay: one wslay server context allocates about 11.7 KiB
 * (measured with valgrind on Debian 12's libwslay 1.1.1), against our budget
 * of 2 KiB of server memory per idle connection. This codec keeps no buffer
 * while a connection is idle: a partial frame header (< 14 bytes) is all the
 * caller keeps between reads, and payload bytes go straight into the message
 * being reassembled.
 *
 * Errors: functions return 0 / a count, or a negative close code
 * (-WS_CLOSE_PROTOCOL, -WS_CLOSE_TOO_BIG, -WS_CLOSE_INVALID_DATA, and
 * -WS_CLOSE_INTERNAL when memory runs out) telling the caller which close to
 * send. The exact validity rules are at the top of ws.c.
 */
#ifndef CHATLOG_WS_H
#define CHATLOG_WS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005,  /* never sent on the wire */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_UNAUTHORIZED = 4001, /* chat.v1: bad or missing Hello */
    WS_CLOSE_SLOW_CONSUMER = 4008,
};

#define WS_MAX_FRAME_HEADER 14 /* server-bound: 2 + 8 + 4 (mask) */
#define WS_MAX_CONTROL_PAYLOAD 125

/* Sec-WebSocket-Accept for the client's Sec-WebSocket-Key: base64(SHA-1(key
 * + GUID)). key must be the base64 of 16 bytes (24 chars). out gets 28 chars
 * and a NUL. Returns 0, or -1 for a malformed key. */
int ws_accept_key(const char *key, size_t key_len, char out[29]);

/* One data message or control frame, delivered by ws_parse. For
 * WS_OP_TEXT / WS_OP_BINARY the payload is a whole (reassembled) message;
 * text has been checked to be valid UTF-8. For WS_OP_CLOSE, close_code is
 * the peer's code (WS_CLOSE_NO_STATUS if none) and data/len its reason
 * (valid UTF-8). data is never NULL (even when len is 0) and is valid
 * during the callback only: it may point into the buffer given to ws_parse.
 * A non-zero return stops parsing and is returned by ws_parse; make it
 * negative (e.g. -WS_CLOSE_POLICY), since a positive value would read as a
 * byte count. */
typedef int (*ws_msg_cb)(void *arg, int opcode, const uint8_t *data,
                         size_t len, int close_code);

typedef struct ws_parser {
    size_t max_message;  /* reassembled message limit (bytes) */
    /* internal state */
    uint8_t *msg;        /* message being reassembled (malloc'd) */
    size_t msg_len, msg_cap;
    int msg_opcode;      /* 0: no message in progress */
    /* the frame whose payload is being read */
    int in_frame;
    int frame_opcode;
    int frame_fin;
    uint64_t frame_left;
    uint8_t mask[4];
    uint64_t frame_pos;  /* payload bytes of this frame already read */
    uint8_t ctl[WS_MAX_CONTROL_PAYLOAD];
    size_t ctl_len;
    uint32_t utf8_state; /* incremental UTF-8 check of a text message */
} ws_parser;

/* max_message bounds a reassembled data message (0 allows only empty
 * ones); the parser never allocates more than that. */
void ws_parser_init(ws_parser *p, size_t max_message);
/* Frees the reassembly buffer; the parser may be reused after init. */
void ws_parser_free(ws_parser *p);
/* True when no message or frame is in progress: then nothing is allocated
 * (the reassembly buffer is freed as each message is delivered). */
int ws_parser_idle(const ws_parser *p);

/* Consume bytes received from a client. buf is modified (unmasked in
 * place). Returns the number of bytes consumed — the caller keeps
 * buf[ret..len) (always < WS_MAX_FRAME_HEADER bytes: an incomplete frame
 * header) and passes it again with the next bytes — or a negative close code
 * for a protocol violation (unmasked frame, reserved bits or opcodes,
 * fragmented or oversized control frame, continuation without a message, a
 * new message inside a fragmented one, non-minimal lengths are accepted,
 * message over max_message, invalid UTF-8 in text or close reason, close
 * payload of 1 byte or with an invalid code), -WS_CLOSE_INTERNAL if
 * memory runs out, or the callback's non-zero return. Errors are reported
 * as soon as the offending bytes arrive (invalid UTF-8 before the message
 * ends, an oversized length on the header, before any allocation). After
 * a non-zero return the only valid call is ws_parser_free (the connection
 * is to be closed). */
ssize_t ws_parse(ws_parser *p, uint8_t *buf, size_t len, ws_msg_cb cb,
                 void *arg);

/* Header of an unmasked server frame with FIN set: writes 2, 4 or 10 bytes
 * to out and returns the count. */
size_t ws_frame_header(uint8_t out[10], int opcode, uint64_t payload_len);

/* A whole close frame (header + code + reason) into out; returns its
 * length. reason may be NULL; it is cut to its longest prefix that is valid
 * UTF-8 and at most 123 bytes, so never inside a code point. A code that
 * must not be sent (outside 1000-4999, or 1005, 1006, 1015) gives a close
 * frame with an empty payload, which the peer reads as 1005. */
size_t ws_close_frame(uint8_t out[2 + WS_MAX_CONTROL_PAYLOAD], int code,
                      const char *reason);

/* 1 if s[0..len) is valid UTF-8 (RFC 3629: no overlongs, surrogates or
 * code points above U+10FFFF), else 0. */
int ws_utf8_valid(const uint8_t *s, size_t len);

#endif
