#ifndef CPROGRESS_SYSTEM_H
#define CPROGRESS_SYSTEM_H
/* Process and GPU figures for resource monitoring. C because NVML is loaded at run time with dlopen and its
 * functions called through pointers of C types. */

/* This process's CPU time (user + system) in seconds and resident memory in bytes, from /proc/self.
 * Returns 0, or -1 if /proc cannot be read. */
int CProgress_process_usage(double *cpu_seconds, double *rss_bytes);

/* GPU utilisation (percent, the busiest device) and memory in use (MiB, summed over devices) via NVML,
 * loaded on first use from libnvidia-ml.so.1. Returns 0 with figures, or -1 when NVML is not there or
 * fails (no GPU, no driver): not an error, the figures are simply unknown. */
int CProgress_gpu_usage(double *gpu_percent, double *gpu_memory_mb);

#endif
