/* The limit progress_update is measured against: a keyed progress update written in C with nothing an engine
 * does not need. See reference_update.c. */
#ifndef REFERENCE_UPDATE_H
#define REFERENCE_UPDATE_H

/* Adds a task (ids up to 255 bytes); 0 on success. Not thread-safe: call before the timed loops. */
int reference_create(const char *task_id);

/* The update: 0 on success, -1 for an unknown task or step > total. Safe from several threads. */
int reference_update(const char *task_id, long long step, long long total);

#endif
