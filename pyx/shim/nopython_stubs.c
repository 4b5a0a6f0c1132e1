/*
 * nopython_stubs.c -- linked into pg_llm.so only, never into the Python
 * extension.
 *
 * Cython wraps every prange/parallel block of a nogil function in "release
 * the GIL if this thread holds it": PyGILState_Check() and
 * PyEval_SaveThread()/PyEval_RestoreThread() (3.12 headers add
 * _PyThreadState_UncheckedGet(), 3.13+ PyThreadState_Swap()).  Inside a
 * PostgreSQL backend no interpreter exists, so the answer is always "no GIL
 * held" and the save/restore pair is never reached.
 *
 * exports.map makes these symbols local: they can neither interpose on nor be
 * interposed by a real libpython that plpython3u loads into the same backend.
 */
#include <stddef.h>
#include <stdlib.h>

int			PyGILState_Check(void);
void	   *PyEval_SaveThread(void);
void		PyEval_RestoreThread(void *tstate);
void	   *_PyThreadState_UncheckedGet(void);
void	   *PyThreadState_GetUnchecked(void);
void	   *PyThreadState_Swap(void *tstate);

int
PyGILState_Check(void)
{
	return 0;
}

void *
_PyThreadState_UncheckedGet(void)
{
	return NULL;
}

void *
PyThreadState_GetUnchecked(void)
{
	return NULL;
}

/* 3.13+: SaveThread is Swap(NULL), returning the previous state: none here */
void *
PyThreadState_Swap(void *tstate)
{
	if (tstate != NULL)
		abort();
	return NULL;
}

/* unreachable while the functions above report "no GIL" */
void *
PyEval_SaveThread(void)
{
	abort();
}

void
PyEval_RestoreThread(void *tstate)
{
	if (tstate != NULL)
		abort();
}
