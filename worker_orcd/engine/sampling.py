"""The sampler chain for one job, built in llama.cpp so sampling never runs Python."""

from __future__ import annotations

import llama_cpp

from worker_orcd.channel.messages import Sampling

PENALTY_LAST_N = 64  # tokens the repetition penalty looks back over
SEED_MODULUS = 0xFFFFFFFF  # llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random"


def engine_seed(seed: int) -> int:
    """The 32-bit seed llama.cpp gets for a job's 64-bit seed."""
    return seed % SEED_MODULUS


def new_sampler(sampling: Sampling, n_vocab: int) -> int:
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    add = llama_cpp.llama_sampler_chain_add
    # 0.0 and 1.0 both mean "off": llama.cpp divides by the penalty.
    if sampling.repetition_penalty not in (0.0, 1.0):
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, sampling.repetition_penalty, 0.0, 0.0),
        )
    if sampling.temperature == 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    if sampling.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    if sampling.top_p < 1.0:
        add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(engine_seed(sampling.seed)))
    return chain


def free_sampler(chain: int) -> None:
    llama_cpp.llama_sampler_free(chain)
