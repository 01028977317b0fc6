/* SPDX-License-Identifier: MIT */
/*
 * faultp11.c - a fault-injecting PKCS#11 module for tests and outage experiments.
 * Forwards every call to a real module (FAULTP11_MODULE, default SoftHSM) and, according to a
 * control file (FAULTP11_CONTROL) that can be rewritten at any time, adds latency to C_Sign,
 * fails it with a chosen CK_RV, hangs it, makes the HSM look gone, or invalidates every session
 * opened before a "reset" (as an HSM-side "clear session all" does).
 *
 * Control file, one key=value per line (missing keys = no fault):
 *   latency_ms=2          every C_Sign takes this much longer (a slow network HSM)
 *   fail=CKR_DEVICE_ERROR every C_Sign fails with this code (name or number)
 *   hang=1                every C_Sign blocks until hang is set back to 0
 *   down=1                no slot is visible, session and sign calls fail with CKR_DEVICE_REMOVED
 *   reset=N               sessions opened while reset was lower than N are invalid
 * The file is re-read when its modification time or size changes (checked on each call).
 * Threads: any; state is guarded by one mutex, held only while reading the file.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define MAX_SESS 4096

struct ctl {
    long latency_ms;
    unsigned long fail;
    int hang;
    int down;
    long reset;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST *g_real;
static CK_FUNCTION_LIST g_list;
static struct ctl g_ctl;
static struct timespec g_mtime;
static off_t g_size = -1;
static struct {
    CK_SESSION_HANDLE h;
    long epoch;
} g_sess[MAX_SESS];

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static unsigned long parse_rv(const char *v)
{
    static const struct {
        const char *name;
        unsigned long rv;
    } names[] = {{"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
                 {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
                 {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
                 {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
                 {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
                 {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
                 {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
                 {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
                 {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
                 {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(v, names[i].name) == 0) {
            return names[i].rv;
        }
    }
    return strtoul(v, NULL, 0);
}

/* Re-reads the control file when it changed; returns a copy of the current faults. */
static struct ctl ctl_get(void)
{
    const char *path = getenv("FAULTP11_CONTROL");
    struct stat st;
    pthread_mutex_lock(&g_lock);
    if (path == NULL || stat(path, &st) != 0) {
        memset(&g_ctl, 0, sizeof(g_ctl));
        g_size = -1;
    } else if (st.st_size != g_size || st.st_mtim.tv_sec != g_mtime.tv_sec ||
               st.st_mtim.tv_nsec != g_mtime.tv_nsec) {
        struct ctl c = {0};
        FILE *f = fopen(path, "r");
        char line[128];
        while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
            char *eq = strchr(line, '=');
            if (eq == NULL) {
                continue;
            }
            *eq = '\0';
            char *v = eq + 1;
            v[strcspn(v, "\r\n ")] = '\0';
            if (strcmp(line, "latency_ms") == 0) {
                c.latency_ms = atol(v);
            } else if (strcmp(line, "fail") == 0) {
                c.fail = parse_rv(v);
            } else if (strcmp(line, "hang") == 0) {
                c.hang = atoi(v);
            } else if (strcmp(line, "down") == 0) {
                c.down = atoi(v);
            } else if (strcmp(line, "reset") == 0) {
                c.reset = atol(v);
            }
        }
        if (f != NULL) {
            fclose(f);
        }
        g_ctl = c;
        g_size = st.st_size;
        g_mtime = st.st_mtim;
    }
    struct ctl c = g_ctl;
    pthread_mutex_unlock(&g_lock);
    return c;
}

static void sess_put(CK_SESSION_HANDLE h, long epoch)
{
    pthread_mutex_lock(&g_lock);
    g_sess[h % MAX_SESS].h = h;
    g_sess[h % MAX_SESS].epoch = epoch;
    pthread_mutex_unlock(&g_lock);
}

static long sess_epoch(CK_SESSION_HANDLE h)
{
    pthread_mutex_lock(&g_lock);
    long e = g_sess[h % MAX_SESS].h == h ? g_sess[h % MAX_SESS].epoch : 0;
    pthread_mutex_unlock(&g_lock);
    return e;
}

static CK_RV w_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    if (ctl_get().down) {
        *count = 0;
        return CKR_OK;
    }
    return g_real->C_GetSlotList(present, list, count);
}

static CK_RV w_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE_PTR out)
{
    struct ctl c = ctl_get();
    if (c.down) {
        return CKR_DEVICE_REMOVED;
    }
    CK_RV rv = g_real->C_OpenSession(slot, flags, app, notify, out);
    if (rv == CKR_OK) {
        sess_put(*out, c.reset);
    }
    return rv;
}

static CK_RV w_Login(CK_SESSION_HANDLE h, CK_USER_TYPE type, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    struct ctl c = ctl_get();
    if (c.down) {
        return CKR_DEVICE_REMOVED;
    }
    if (sess_epoch(h) < c.reset) {
        return CKR_SESSION_HANDLE_INVALID;
    }
    return g_real->C_Login(h, type, pin, len);
}

static CK_RV w_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                    CK_ULONG_PTR siglen)
{
    struct ctl c = ctl_get();
    while (c.hang) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
        c = ctl_get();
    }
    if (c.latency_ms > 0) {
        struct timespec ts = {c.latency_ms / 1000, (c.latency_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    /* finish the real operation either way, so the session stays usable */
    CK_RV rv = g_real->C_Sign(h, data, len, sig, siglen);
    if (c.down) {
        return CKR_DEVICE_REMOVED;
    }
    if (sess_epoch(h) < c.reset) {
        return CKR_SESSION_HANDLE_INVALID;
    }
    if (c.fail != 0) {
        return c.fail;
    }
    return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    pthread_mutex_lock(&g_lock);
    if (g_real == NULL) {
        const char *path = getenv("FAULTP11_MODULE");
        void *dl = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
        CK_C_GetFunctionList gfl = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
        if (gfl == NULL || gfl(&g_real) != CKR_OK) {
            pthread_mutex_unlock(&g_lock);
            return CKR_GENERAL_ERROR;
        }
        g_list = *g_real;
        g_list.C_GetFunctionList = C_GetFunctionList;
        g_list.C_GetSlotList = w_GetSlotList;
        g_list.C_OpenSession = w_OpenSession;
        g_list.C_Login = w_Login;
        g_list.C_Sign = w_Sign;
    }
    pthread_mutex_unlock(&g_lock);
    *list = &g_list;
    return CKR_OK;
}
