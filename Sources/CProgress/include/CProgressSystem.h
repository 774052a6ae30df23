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

/* pipe2(fds, O_CLOEXEC) (Swift's Glibc module does not declare pipe2): a pipe no program the host starts
 * inherits. Returns 0, or -1 with errno set. */
int CProgress_pipe_cloexec(int fds[2]);

/* Names the calling thread (at most 15 bytes are kept), as ps, top -H and gdb show it. Swift's Glibc module does
 * not declare pthread_setname_np. Returns 0 or an error number. */
int CProgress_name_this_thread(const char *name);

#endif
