#include "CProgressSystem.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int CProgress_process_usage(double *cpu_seconds, double *rss_bytes) {
    FILE *f = fopen("/proc/self/stat", "re"); /* "e": O_CLOEXEC, as every descriptor of the engine */
    if (f == NULL) return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    unsigned long utime = 0, stime = 0;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    long ticks = sysconf(_SC_CLK_TCK);
    *cpu_seconds = (double)(utime + stime) / (double)(ticks > 0 ? ticks : 100);
    f = fopen("/proc/self/statm", "re");
    if (f == NULL) return -1;
    unsigned long size = 0, resident = 0;
    int ok = fscanf(f, "%lu %lu", &size, &resident) == 2;
    fclose(f);
    if (!ok) return -1;
    *rss_bytes = (double)resident * (double)sysconf(_SC_PAGESIZE);
    return 0;
}

/* The few NVML entry points used, with their C types (nvml.h is not needed to build). */
typedef int (*nvml_init_fn)(void);
typedef int (*nvml_count_fn)(unsigned int *);
typedef int (*nvml_handle_fn)(unsigned int, void **);
typedef struct { unsigned int gpu, memory; } nvml_utilization;
typedef struct { unsigned long long total, free, used; } nvml_memory;
typedef int (*nvml_util_fn)(void *, nvml_utilization *);
typedef int (*nvml_mem_fn)(void *, nvml_memory *);

static struct {
    int available;
    nvml_count_fn count;
    nvml_handle_fn handle;
    nvml_util_fn utilization;
    nvml_mem_fn memory;
} nvml;
static pthread_once_t nvml_once = PTHREAD_ONCE_INIT;

static void nvml_load(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return;
    nvml_init_fn init = (nvml_init_fn)dlsym(lib, "nvmlInit_v2");
    nvml.count = (nvml_count_fn)dlsym(lib, "nvmlDeviceGetCount_v2");
    nvml.handle = (nvml_handle_fn)dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
    nvml.utilization = (nvml_util_fn)dlsym(lib, "nvmlDeviceGetUtilizationRates");
    nvml.memory = (nvml_mem_fn)dlsym(lib, "nvmlDeviceGetMemoryInfo");
    if (init && nvml.count && nvml.handle && nvml.utilization && nvml.memory && init() == 0) nvml.available = 1;
}

int CProgress_gpu_usage(double *gpu_percent, double *gpu_memory_mb) {
    pthread_once(&nvml_once, nvml_load);
    if (!nvml.available) return -1;
    unsigned int devices = 0;
    if (nvml.count(&devices) != 0 || devices == 0) return -1;
    double busiest = 0, used = 0;
    int any = 0;
    for (unsigned int i = 0; i < devices; i++) {
        void *device = NULL;
        nvml_utilization u;
        nvml_memory m;
        if (nvml.handle(i, &device) != 0) continue;
        if (nvml.utilization(device, &u) == 0 && u.gpu > busiest) busiest = u.gpu;
        if (nvml.memory(device, &m) == 0) used += (double)m.used / (1024.0 * 1024.0);
        any = 1;
    }
    if (!any) return -1;
    *gpu_percent = busiest;
    *gpu_memory_mb = used;
    return 0;
}
