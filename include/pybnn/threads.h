/* The process's worker threads: one pool, compiled into the _cpu module only; every kernel
 * module reaches it through pybnn_par_runner (common.h), which _checks.pxi sets at import
 * from the capsule _cpu exports.  One pool per process, not one per module: each module
 * holding its own threads would multiply them.
 *
 * Why not OpenMP: a GNU OpenMP parallel region costs 0.7-0.95 us to open and join here
 * even with its threads spinning, and pybnn runs many layers of 10-50 us (a 7x7x256 binary
 * convolution is 27 us on one core); handing parts to this pool costs 0.23 us.
 *
 * How: the caller writes the job (fn, ctx, nparts) into the slots of workers 1 .. nparts-1
 * and bumps their tickets (a slot is one cache line: handing a part over moves one line
 * each way); worker w runs part w, the caller part 0 (and any part beyond the workers it
 * could start), then waits until every worker has marked its ticket done.  Workers spin
 * for PYBNN_POOL_SPIN_NS after their last job (the next layer of a model is usually
 * microseconds away), then sleep on a condition variable; the caller waiting for a slow
 * worker does the same.  The sleep/wake handshakes are Dekker-style: each side stores its
 * own flag and loads the other's with sequentially consistent atomics, so one of them
 * always sees the other.
 * One job at a time: a second caller (another Python thread, kernels release the GIL)
 * finding the pool busy runs its parts itself, one after the other - same results.
 * A child forked after the pool started has none of its workers: it runs parts serially. */
#ifndef PYBNN_THREADS_H
#define PYBNN_THREADS_H

#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "pybnn/common.h"

#define PYBNN_POOL_SPIN_NS 300000 /* 0.3 ms: a model's next layer comes sooner */

static inline void pybnn_pool_relax(void) {
#if PYBNN_X86
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t pybnn_pool_now_ns(void) { /* 64 bits on 32-bit ARM too */
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* One turn of a spin-wait begun at t0 (turn i >= 1): pause, and 1 once it has spun
 * PYBNN_POOL_SPIN_NS (the clock is read every 64 turns) and should go to sleep. */
static inline int pybnn_pool_spun_out(int i, int64_t t0) {
    pybnn_pool_relax();
    return i % 64 == 0 && pybnn_pool_now_ns() - t0 > PYBNN_POOL_SPIN_NS;
}

/* One cache line per worker, everything a job hands over in it: the caller writes the
 * part's function and bumps `ticket`, the worker sets `done` to the ticket it finished. */
typedef struct {
    pybnn_part_fn fn;
    void *ctx;
    int nparts;
    unsigned ticket, done; /* atomic */
} __attribute__((aligned(64))) pybnn_pool_slot;

static struct {
    pthread_mutex_t busy;  /* held by the caller running a job */
    pthread_mutex_t sleep; /* guards the two condition variables */
    pthread_cond_t wake, finished;
    int workers;           /* started; worker w (1 ..) runs part w */
    int forked;            /* this process is a child forked after workers started */
    int sleepers;          /* atomic: workers about to wait on `wake` */
    int waiting;           /* atomic: the caller is about to wait on `finished` */
    pybnn_pool_slot slot[PYBNN_PAR_MAX_THREADS];
} pybnn_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                PTHREAD_COND_INITIALIZER};

static void pybnn_pool_child(void) {
    if (pybnn_pool.workers > 0)
        pybnn_pool.forked = 1;
}

static void pybnn_pool_register(void) { pthread_atfork(NULL, NULL, pybnn_pool_child); }

/* Worker me's next ticket after `seen`: spin, then sleep until the caller wakes us. */
static unsigned pybnn_pool_next(int me, unsigned seen) {
    unsigned *ticket = &pybnn_pool.slot[me].ticket, t;
    int64_t t0 = pybnn_pool_now_ns();
    for (int i = 1;; i++) {
        if ((t = __atomic_load_n(ticket, __ATOMIC_ACQUIRE)) != seen)
            return t;
        if (pybnn_pool_spun_out(i, t0))
            break;
    }
    pthread_mutex_lock(&pybnn_pool.sleep);
    __atomic_add_fetch(&pybnn_pool.sleepers, 1, __ATOMIC_SEQ_CST);
    while ((t = __atomic_load_n(ticket, __ATOMIC_SEQ_CST)) == seen)
        pthread_cond_wait(&pybnn_pool.wake, &pybnn_pool.sleep);
    __atomic_sub_fetch(&pybnn_pool.sleepers, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&pybnn_pool.sleep);
    return t;
}

static void *pybnn_pool_worker(void *arg) {
    int me = (int)(intptr_t)arg;
    pybnn_pool_slot *s = &pybnn_pool.slot[me];
    unsigned seen = 0; /* tickets start at 0 and only this worker's jobs bump its own */
    for (;;) {
        seen = pybnn_pool_next(me, seen);
        s->fn(s->ctx, me, s->nparts);
        __atomic_store_n(&s->done, seen, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&pybnn_pool.waiting, __ATOMIC_SEQ_CST)) {
            pthread_mutex_lock(&pybnn_pool.sleep);
            pthread_cond_broadcast(&pybnn_pool.finished);
            pthread_mutex_unlock(&pybnn_pool.sleep);
        }
    }
    return NULL;
}

/* Starts workers up to `want` (the caller holds `busy`); stops at the first failure. */
static void pybnn_pool_grow(int want) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    sigset_t all, old;
    pthread_once(&once, pybnn_pool_register);
    sigfillset(&all); /* workers inherit a full mask: signals go to the interpreter's threads */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pybnn_pool.workers < want) {
        int me = pybnn_pool.workers + 1;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, pybnn_pool_worker, (void *)(intptr_t)me);
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        pybnn_pool.workers = me;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* 1 once every worker 1 .. helpers has finished its part of the current job. */
static inline int pybnn_pool_all_done(int helpers) {
    for (int w = 1; w <= helpers; w++) {
        pybnn_pool_slot *s = &pybnn_pool.slot[w];
        if (__atomic_load_n(&s->done, __ATOMIC_SEQ_CST) != s->ticket)
            return 0;
    }
    return 1;
}

/* Runs fn(ctx, p, nparts) for every p in [0, nparts) (nparts <= PYBNN_PAR_MAX_THREADS), on
 * the pool when it is free. */
static void pybnn_pool_run(int nparts, pybnn_part_fn fn, void *ctx) {
    if (nparts < 2 || pybnn_pool.forked || pthread_mutex_trylock(&pybnn_pool.busy) != 0) {
        for (int p = 0; p < nparts; p++)
            fn(ctx, p, nparts);
        return;
    }
    if (pybnn_pool.workers < nparts - 1)
        pybnn_pool_grow(nparts - 1);
    /* workers run parts 1 .. helpers; this thread part 0 and helpers+1 .. nparts-1 */
    int helpers = PYBNN_MIN(pybnn_pool.workers, nparts - 1);
    for (int w = 1; w <= helpers; w++) {
        pybnn_pool_slot *s = &pybnn_pool.slot[w];
        s->fn = fn, s->ctx = ctx, s->nparts = nparts;
        __atomic_store_n(&s->ticket, s->ticket + 1, __ATOMIC_SEQ_CST);
    }
    if (helpers > 0 && __atomic_load_n(&pybnn_pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&pybnn_pool.sleep);
        pthread_cond_broadcast(&pybnn_pool.wake);
        pthread_mutex_unlock(&pybnn_pool.sleep);
    }
    fn(ctx, 0, nparts);
    for (int p = helpers + 1; p < nparts; p++)
        fn(ctx, p, nparts);
    int64_t t0 = pybnn_pool_now_ns();
    for (int i = 1; !pybnn_pool_all_done(helpers); i++) {
        if (pybnn_pool_spun_out(i, t0)) {
            pthread_mutex_lock(&pybnn_pool.sleep);
            __atomic_store_n(&pybnn_pool.waiting, 1, __ATOMIC_SEQ_CST);
            while (!pybnn_pool_all_done(helpers))
                pthread_cond_wait(&pybnn_pool.finished, &pybnn_pool.sleep);
            __atomic_store_n(&pybnn_pool.waiting, 0, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&pybnn_pool.sleep);
            break;
        }
    }
    pthread_mutex_unlock(&pybnn_pool.busy);
}

/* Worker threads started so far (0 until a kernel first runs on more than one thread). */
static inline int pybnn_pool_workers(void) { return pybnn_pool.workers; }

#endif /* PYBNN_THREADS_H */
