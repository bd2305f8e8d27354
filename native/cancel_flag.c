/*
 * The job's cancel flag, readable by llama.cpp without the GIL.
 *
 * The flag is one atomic int. The worker's front process keeps it in shared
 * memory and raises it with a plain store; the engine process passes the same
 * word's address (in its own mapping) to llama.cpp as the callback's data.
 *
 * llama.cpp's CPU backend calls the abort callback after every graph node
 * (hundreds of times per token). A Python callback would take the GIL on each
 * call and stall the event loop; this one is a single relaxed atomic load.
 * Python raises the flag through ctypes; the inference thread passes the
 * flag's address as the callback's user data.
 */
#include <Python.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    atomic_int raised;
} orcd_cancel_flag;

orcd_cancel_flag *orcd_cancel_flag_new(void) {
    orcd_cancel_flag *flag = malloc(sizeof *flag);
    if (flag != NULL) {
        atomic_init(&flag->raised, 0);
    }
    return flag;
}

void orcd_cancel_flag_free(orcd_cancel_flag *flag) { free(flag); }

void orcd_cancel_flag_raise(orcd_cancel_flag *flag) {
    atomic_store_explicit(&flag->raised, 1, memory_order_release);
}

void orcd_cancel_flag_clear(orcd_cancel_flag *flag) {
    atomic_store_explicit(&flag->raised, 0, memory_order_release);
}

int orcd_cancel_flag_is_raised(orcd_cancel_flag *flag) {
    return atomic_load_explicit(&flag->raised, memory_order_acquire);
}

/* ggml_abort_callback: bool (*)(void *data). Returning true aborts the graph. */
bool orcd_abort_callback(void *data) {
    orcd_cancel_flag *flag = (orcd_cancel_flag *)data;
    return flag != NULL && atomic_load_explicit(&flag->raised, memory_order_relaxed) != 0;
}

/* The words of every run in one batched decode (engine.slots): one graph computes
 * them all, so it may stop only once each of its runs is cancelled. The engine
 * fills it before each decode; each word is its own run's, nothing else decides
 * a run's end.
 *
 * `arrived` counts the runs handed to the engine, `taken` those its loop has
 * taken (one writer each). `gives_way` is set for a decode that holds one run's
 * whole prompt chunk, alone: such a decode stops at the next graph node once a
 * run has arrived that the loop has not taken, so the newcomer takes its slot
 * (or its cancel is seen) without waiting for the chunk; the engine evaluates
 * the chunk again beside it. That stop ends no run. */
typedef struct {
    int count;
    atomic_int **words;
    _Atomic long long arrived;
    _Atomic long long taken;
    int gives_way;
} orcd_batch_words;

/* ggml_abort_callback for a batch: true if every word is raised (none: false), or
 * if the decode gives way and a run is waiting to be taken. */
bool orcd_abort_all_callback(void *data) {
    const orcd_batch_words *batch = (const orcd_batch_words *)data;
    if (batch == NULL || batch->count <= 0) {
        return false;
    }
    if (batch->gives_way && atomic_load_explicit(&batch->arrived, memory_order_relaxed) >
                                atomic_load_explicit(&batch->taken, memory_order_relaxed)) {
        return true;
    }
    for (int i = 0; i < batch->count; i++) {
        if (atomic_load_explicit(batch->words[i], memory_order_relaxed) == 0) {
            return false;
        }
    }
    return true;
}

/* Tests only (fault `hang=`): an engine stuck in C that never reads its flag,
 * as a wedged kernel or driver call would be. Only killing the process ends it. */
void orcd_hang_in_c(void) {
    for (;;) {
        pause();
    }
}

/* A module with no Python-level functions: it exists so that the package's own
 * install compiles this file; Python reaches the symbols above through ctypes. */
static struct PyModuleDef orcd_native_module = {
    PyModuleDef_HEAD_INIT, "_native", "Native cancel flag for llama.cpp's abort callback.", -1, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&orcd_native_module); }
