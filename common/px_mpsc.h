/* SPDX-License-Identifier: MIT */
/*
 * px_mpsc.h - the lock-free list every cross-thread hand-off here goes through: any number of
 * producers push nodes, one consumer takes the whole list at once (h2o multithread.c's shape).
 * Owns nothing: the nodes are the caller's; a pushed node belongs to the consumer from then on.
 * Threads: push from any thread; take from the one consumer, or from anyone once every
 * producer has stopped (shutdown). There is no pop of one node, hence no ABA problem.
 * Memory order: push publishes its node, with everything the producer wrote before, by a
 * release CAS; take gets the whole list by one acquire exchange, so the consumer sees every
 * node it took as its producer left it. A failed CAS only relinks the node: relaxed.
 * Wake-ups: push returns true when the list was empty; the producer then wakes the consumer
 * (an eventfd write), and a consumer that takes the whole list on each wake-up misses none.
 * Not here: the wake-up itself, and bounds (callers count what they let in).
 *
 * PX_MPSC_DEFINE(name, type, next) defines these for nodes of `type` linked by their member
 * `next`, on a list head declared `_Atomic(type *) head` (NULL: empty):
 *   bool name_push(_Atomic(type *) *head, type *n)
 *   bool name_push_chain(_Atomic(type *) *head, type *first, type *last)
 *        a chain first -> ... -> last linked by the caller, pushed with one CAS
 *   type *name_take(_Atomic(type *) *head)      everything, oldest first
 *   type *name_take_any(_Atomic(type *) *head)  everything, newest first (where order does
 *                                               not matter: free lists, shutdown)
 */
#ifndef PX_MPSC_H
#define PX_MPSC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* a file may use only some of them: clang warns of unused static inline functions of its own */
#define PX_MPSC__FN static inline __attribute__((unused))

#define PX_MPSC_DEFINE(name, type, next)                                                           \
    PX_MPSC__FN bool name##_push_chain(_Atomic(type *) *head, type *first, type *last)             \
    {                                                                                              \
        type *old = atomic_load_explicit(head, memory_order_relaxed);                              \
        do {                                                                                       \
            last->next = old;                                                                      \
        } while (!atomic_compare_exchange_weak_explicit(head, &old, first, memory_order_release,   \
                                                        memory_order_relaxed));                    \
        return old == NULL;                                                                        \
    }                                                                                              \
    PX_MPSC__FN bool name##_push(_Atomic(type *) *head, type *n)                                   \
    {                                                                                              \
        return name##_push_chain(head, n, n);                                                      \
    }                                                                                              \
    PX_MPSC__FN type *name##_take_any(_Atomic(type *) *head)                                       \
    {                                                                                              \
        return atomic_exchange_explicit(head, NULL, memory_order_acquire);                         \
    }                                                                                              \
    PX_MPSC__FN type *name##_take(_Atomic(type *) *head)                                           \
    {                                                                                              \
        type *list = name##_take_any(head), *rev = NULL;                                           \
        while (list != NULL) { /* the list is newest first */                                      \
            type *nx = list->next;                                                                 \
            list->next = rev;                                                                      \
            rev = list;                                                                            \
            list = nx;                                                                             \
        }                                                                                          \
        return rev;                                                                                \
    }

#endif
