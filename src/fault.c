/* Fault points: the failing paths of tally_open and of store commits, made reachable from tests. */
#include "internal.h"

_Atomic long tly_fault_countdown;
_Atomic int tly_fault_store_full;

int tly_fault(void)
{
    if (atomic_load_explicit(&tly_fault_countdown, memory_order_relaxed) <= 0) return 0;
    return atomic_fetch_sub(&tly_fault_countdown, 1) == 1;
}
