/* Fault points: the failing paths of tally_open, made reachable from tests. */
#include "internal.h"

_Atomic long tly_fault_countdown;

int tly_fault(void)
{
    if (atomic_load_explicit(&tly_fault_countdown, memory_order_relaxed) <= 0) return 0;
    return atomic_fetch_sub(&tly_fault_countdown, 1) == 1;
}
