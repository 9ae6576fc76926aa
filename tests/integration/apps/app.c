/*
 * Integration-test application: emits COUNT `pyrelayd_test:event` events whose `seq` field runs
 * from FIRST_SEQ to FIRST_SEQ + COUNT - 1, in that order, from the main thread.
 *
 * usage: app COUNT [DELAY_US [PAYLOAD_BYTES [FIRST_SEQ]]]
 *   DELAY_US       sleep between two events, in microseconds (default 0)
 *   PAYLOAD_BYTES  length of the string field `payload` (default 0)
 *   FIRST_SEQ      sequence number of the first event (default 0)
 *
 * Run it with LTTNG_UST_REGISTER_TIMEOUT set so that its constructor waits until the session
 * daemon has answered its registration: no event is then lost to a late registration.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tp.h"

static void sleep_us(long us)
{
    struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };

    while (nanosleep(&ts, &ts) != 0) {
    }
}

int main(int argc, char **argv)
{
    uint64_t count, first_seq = 0, seq;
    long delay_us = 0;
    size_t payload_len = 0;
    char *payload;

    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: %s COUNT [DELAY_US [PAYLOAD_BYTES [FIRST_SEQ]]]\n", argv[0]);
        return 2;
    }
    count = strtoull(argv[1], NULL, 10);
    if (argc >= 3) {
        delay_us = strtol(argv[2], NULL, 10);
    }
    if (argc >= 4) {
        payload_len = strtoul(argv[3], NULL, 10);
    }
    if (argc >= 5) {
        first_seq = strtoull(argv[4], NULL, 10);
    }
    payload = malloc(payload_len + 1);
    if (payload == NULL) {
        return 1;
    }
    memset(payload, 'x', payload_len);
    payload[payload_len] = '\0';

    for (seq = first_seq; seq < first_seq + count; seq++) {
        lttng_ust_tracepoint(pyrelayd_test, event, seq, payload);
        if (delay_us > 0) {
            sleep_us(delay_us);
        }
    }
    free(payload);
    return 0;
}
