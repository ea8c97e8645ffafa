/* Consent (issue 17): the device's preferences, category id -> boolean, and which destinations
 * they let a message reach.
 *
 * Destinations name the categories they need (`"consent": "analytics"` or a list). At open every
 * category any destination names gets a bit, and each destination a mask of the bits it needs, so
 * the check per message and destination is one AND: a destination gets a message when every bit
 * it needs is granted in that message's preferences. A message's granted mask is worked out once,
 * from the preferences it carries, not once per destination.
 *
 * The preferences themselves are JSON text (an object of booleans): what tally_consent merged,
 * what the store keeps in meta under "consent", what messages are stamped with. */
#ifndef TALLY_CONSENT_H
#define TALLY_CONSENT_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "json.h"

#define CONSENT_MAX_JSON_BYTES 4096  /* a tally_consent argument, and the merged preferences */
#define CONSENT_MAX_CATEGORIES 64    /* in the preferences; and distinct ones over all destinations (bits) */
#define CONSENT_MAX_ID_BYTES   64    /* a category id: 1 to 64 bytes */
#define CONSENT_META_KEY       "consent"

enum { CONSENT_DEFAULT_GRANT, CONSENT_DEFAULT_DENY }; /* consent_default, server mode */

/* Read-only once the handle is open. */
typedef struct consent_cfg {
    char     *cat[CONSENT_MAX_CATEGORIES]; /* the categories destinations name, by bit */
    size_t    ncats;
    uint64_t *need;                        /* per destination (in configuration order) */
    size_t    ndests;
    uint64_t  any_need;                    /* the union of need[] */
} consent_cfg;

/* A set of preferences, as the threads apply it. */
typedef struct consent_state {
    int      decided;    /* preferences were given (tally_consent, or the store at open) */
    int      opted_out;  /* decided, at least one category, all false */
    uint64_t granted;    /* bits of consent_cfg.cat set true */
} consent_state;

/* Checks a destination's "consent" value: a category id or a non-empty list of them. `where` names
 * the destination in the error ("destinations[2]"). TALLY_OK or TALLY_ECONFIG. */
int  consent_check_dest(const tj_value *v, const char *where, tly_err *err);
/* Resolves every destination's categories (dest_json: the configured objects). TALLY_OK,
 * TALLY_ECONFIG (more than CONSENT_MAX_CATEGORIES distinct categories), TALLY_ENOMEM. */
int  consent_open(consent_cfg *c, char *const *dest_json, size_t ndests, tly_err *err);
void consent_free(consent_cfg *c);

/* Merges `update` (a tally_consent argument: an object of booleans, or `false` for every known
 * category false) into `prefs` (current preferences, NULL for none) into *out (malloc'd JSON
 * object text). TALLY_EINVAL naming the field and the limit, or TALLY_ENOMEM; *out is NULL then. */
int  consent_merge(const consent_cfg *c, const char *prefs, const char *update, size_t ulen, char **out, tly_err *err);

/* The bits of c's categories that `prefs` (an object) sets true; categories it lacks are not
 * granted. A value that is not an object grants nothing. */
uint64_t consent_granted(const consent_cfg *c, const tj_value *prefs);
/* The state of preferences text (NULL: undecided). TALLY_OK, or TALLY_EINVAL when the text is not
 * an object of booleans (a hand-edited store), TALLY_ENOMEM. */
int  consent_state_of(const consent_cfg *c, const char *prefs, consent_state *out, tly_err *err);
/* Whether a destination with mask `need` may get a message whose preferences grant `granted`. */
static inline int consent_allows(uint64_t need, uint64_t granted) { return (need & ~granted) == 0; }

#endif
