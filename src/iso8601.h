/* Checking caller timestamps: Segment's `timestamp` is an ISO-8601 date and time. */
#ifndef TALLY_ISO8601_H
#define TALLY_ISO8601_H

#include <stddef.h>

/* 1 when s[0..len) is an RFC 3339 date-time (the ISO-8601 profile Segment and browsers write):
 * YYYY-MM-DDTHH:MM:SS, optional fraction, then Z or +HH:MM / -HH:MM. Dates are checked against
 * the calendar (no 2024-02-30), hours 00-23, seconds 00-60 (leap second). */
int tly_iso8601_valid(const char *s, size_t len);

#endif
