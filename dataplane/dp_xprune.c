/* SPDX-License-Identifier: MIT */
/*
 * dp_xprune.c - [export] pcap_keep: the oldest rolled pcap files beyond it are deleted by a
 * thread of their own, so that the writer thread never waits for an unlink. Deleting a
 * 256 MiB file took 63-73 ms on this machine's ext4 (strace -T), and a rotation came every
 * 0.4 s under bulk load: the writer stood still for a sixth of the time, the loops' chunks
 * piled up in the queue (the pool grew, the chunks went cold, those framed for the old file
 * were copied), and a small queue_mb dropped packets. The writer only kicks (dp_xprune_kick,
 * after each new file); kicks that come while a prune runs make one more prune.
 * Threads: dp_xprune_start/stop from the thread that starts and frees the export; kick from
 * the writer; the pruner reads x->pattern and x->keep, which do not change once it runs.
 * Not here: which file is written and when it rotates (dp_xfile.c).
 */
#include "dp_export_int.h"

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The pattern as a glob: every strftime conversion becomes '*'. */
static void pattern_glob(const char *pat, char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = pat; *p != '\0' && o + 2 < cap; p++) {
        if (*p == '%' && p[1] != '\0') {
            p++;
            out[o++] = *p == '%' ? '%' : '*';
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static int by_mtime(const void *a, const void *b)
{
    const char *pa = *(const char *const *)a, *pb = *(const char *const *)b;
    struct stat sa, sb;
    uint64_t ta = stat(pa, &sa) == 0 ? (uint64_t)sa.st_mtim.tv_sec * 1000000000u + sa.st_mtim.tv_nsec : 0;
    uint64_t tb = stat(pb, &sb) == 0 ? (uint64_t)sb.st_mtim.tv_sec * 1000000000u + sb.st_mtim.tv_nsec : 0;
    return ta != tb ? (ta < tb ? -1 : 1) : strcmp(pa, pb);
}

/* Deletes the oldest files of the pattern until keep remain; never `current`, the file the
 * writer had just opened when it kicked (newer ones sort after it, so they stay too). */
static void prune(const struct dp_export *x, const char *current)
{
    char g[300], g2[310];
    pattern_glob(x->pattern, g, sizeof(g));
    snprintf(g2, sizeof(g2), "%s.*", g);
    glob_t gl;
    memset(&gl, 0, sizeof(gl));
    int r1 = glob(g, 0, NULL, &gl);
    int r2 = glob(g2, r1 == 0 ? GLOB_APPEND : 0, NULL, &gl);
    if (r1 != 0 && r2 != 0) {
        globfree(&gl);
        return;
    }
    qsort(gl.gl_pathv, gl.gl_pathc, sizeof(char *), by_mtime);
    size_t n = gl.gl_pathc;
    for (size_t i = 0; i < gl.gl_pathc && n > (size_t)x->keep; i++) {
        if (strcmp(gl.gl_pathv[i], current) != 0 && unlink(gl.gl_pathv[i]) == 0) {
            n--;
        }
    }
    globfree(&gl);
}

static void *pruner_main(void *arg)
{
    struct dp_export *x = arg;
    char current[sizeof(x->prune_path)];
    pthread_mutex_lock(&x->prune_lock);
    for (;;) {
        while (!x->prune_want && !x->prune_stop) {
            pthread_cond_wait(&x->prune_cond, &x->prune_lock);
        }
        if (!x->prune_want) { /* stopped with nothing asked */
            break;
        }
        x->prune_want = false;
        memcpy(current, x->prune_path, sizeof(current));
        pthread_mutex_unlock(&x->prune_lock);
        prune(x, current);
        pthread_mutex_lock(&x->prune_lock);
    }
    pthread_mutex_unlock(&x->prune_lock);
    return NULL;
}

int dp_xprune_start(struct dp_export *x)
{
    if (!x->on[DP_EXPORT_FILE] || x->keep <= 0 || x->prune_ok) {
        return 0;
    }
    pthread_mutex_init(&x->prune_lock, NULL);
    pthread_cond_init(&x->prune_cond, NULL);
    int r = pthread_create(&x->prune_th, NULL, pruner_main, x);
    if (r != 0) {
        pthread_cond_destroy(&x->prune_cond);
        pthread_mutex_destroy(&x->prune_lock);
        return -r;
    }
    pthread_setname_np(x->prune_th, "tlsmint-prune");
    x->prune_ok = true;
    return 0;
}

void dp_xprune_kick(struct dp_export *x, const char *current)
{
    if (x->keep <= 0) {
        return;
    }
    if (!x->prune_ok) { /* no thread for it (dp_xprune_start failed): here, as before */
        prune(x, current);
        return;
    }
    pthread_mutex_lock(&x->prune_lock);
    snprintf(x->prune_path, sizeof(x->prune_path), "%s", current);
    x->prune_want = true;
    pthread_cond_signal(&x->prune_cond);
    pthread_mutex_unlock(&x->prune_lock);
}

void dp_xprune_stop(struct dp_export *x)
{
    if (!x->prune_ok) {
        return;
    }
    pthread_mutex_lock(&x->prune_lock);
    x->prune_stop = true; /* a prune asked for is still made */
    pthread_cond_signal(&x->prune_cond);
    pthread_mutex_unlock(&x->prune_lock);
    pthread_join(x->prune_th, NULL);
    pthread_cond_destroy(&x->prune_cond);
    pthread_mutex_destroy(&x->prune_lock);
    x->prune_ok = false;
}
