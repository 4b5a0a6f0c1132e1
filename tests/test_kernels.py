"""Kernel properties seen from Python: the AVX2 path equals the AVX-512 one,
results do not depend on the thread count, GEMM's transposes, accumulation
and bias, and the accuracy of the vectorised exp."""
import numpy as np
import pytest

from pg_llm_cy import kernels as K

SHAPES = [(1, 1, 1), (3, 7, 5), (4, 300, 129), (5, 64, 33), (8, 32, 256), (17, 100, 300),
          (64, 768, 2304), (130, 257, 95), (385, 70, 51)]


@pytest.fixture
def portable():
    K.set_force_portable(True)
    yield
    K.set_force_portable(False)


def gemm_check(m, k, n, ta, tb, accumulate, bias, seed=0):
    rng = np.random.default_rng(seed + m + k + n)
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    c0 = rng.standard_normal((m, n), dtype=np.float32)
    bv = rng.standard_normal(n, dtype=np.float32) if bias else None
    c = c0.copy()
    K.gemm(a, b, c, ta, tb, bv, accumulate)
    expect = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    if bias:
        expect += bv
    if accumulate:
        expect += c0
    np.testing.assert_allclose(c, expect, rtol=1e-4, atol=2e-4 * np.sqrt(k))


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_variants(m, k, n, ta, tb):
    gemm_check(m, k, n, ta, tb, accumulate=(m + n) % 2 == 0, bias=(k % 2 == 1))


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 1)])
def test_gemm_avx2_path(portable, m, k, n, ta, tb):
    gemm_check(m, k, n, ta, tb, accumulate=m % 2 == 1, bias=True)


def test_gemm_reference_kernel():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 13), dtype=np.float32)
    b = rng.standard_normal((13, 6), dtype=np.float32)
    c = np.empty((9, 6), np.float32)
    K.gemm(a, b, c, reference=True)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def run_with_threads(n, fn):
    old = K.get_max_threads()
    K.set_num_threads(n)
    try:
        return fn()
    finally:
        K.set_num_threads(old)


@pytest.mark.parametrize("name", ["gemm", "softmax", "layernorm_backward", "attention_backward",
                                  "cross_entropy_backward", "sum_squares"])
def test_results_do_not_depend_on_thread_count(name):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((96, 768), dtype=np.float32)
    w = rng.standard_normal((768, 2304), dtype=np.float32)
    g = rng.standard_normal(768, dtype=np.float32)
    fns = {
        "gemm": lambda: K.matmul(x, w),
        "softmax": lambda: K.softmax(x),
        "layernorm_backward": lambda: K.layernorm_backward(x, x * 0.5, g),
        "attention_backward": lambda: K.attention_backward(
            x[:, :96], w[:96, :288], w[0, :288], w[:96, :96], w[1, :96], x[:, :96] * 0.3, 4),
        "cross_entropy_backward": lambda: K.cross_entropy_backward(x, np.arange(96) * 7),
        "sum_squares": lambda: np.float64(K.sum_squares(w.reshape(-1))),
    }
    one = run_with_threads(1, fns[name])
    two = run_with_threads(2, fns[name])
    for a, b in zip(one if isinstance(one, tuple) else (one,), two if isinstance(two, tuple) else (two,)):
        assert np.array_equal(a, b), name


def checksum64_reference(data: bytes) -> int:
    """pgllm_checksum64 (pyx/ops.pxi) in plain Python."""
    P1, P2, P3, M = 11400714785074694791, 14029467366897019727, 1609587929392839161, (1 << 64) - 1

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & M

    def mix(z):      # splitmix64's finaliser
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
        return z ^ (z >> 31)

    def block(p, seed):
        acc = [(seed + (lane + 1) * P1) & M for lane in range(4)]
        words = np.frombuffer(p[:len(p) // 32 * 32], dtype="<u8").tolist()
        for i in range(0, len(words), 4):
            for lane in range(4):
                acc[lane] = (rotl((acc[lane] + words[i + lane] * P2) & M, 31) * P1) & M
        h = (rotl(acc[0], 1) + rotl(acc[1], 7) + rotl(acc[2], 12) + rotl(acc[3], 18)) & M
        for byte in p[len(p) // 32 * 32:]:
            h = (rotl(h ^ ((byte * P3) & M), 11) * P1) & M
        return mix(h ^ len(p))

    h = (len(data) * P3) & M
    for b in range(0, len(data), 1 << 20):
        h = (rotl(h ^ block(data[b:b + (1 << 20)], b >> 20), 27) * P1) & M
    return mix(h)


def test_checksum64_matches_its_reference_and_sees_one_bit():
    data = np.random.default_rng(5).integers(0, 256, (1 << 20) + 45, dtype=np.uint8)
    want = checksum64_reference(data.tobytes())
    assert run_with_threads(1, lambda: K.checksum64(data)) == want
    assert run_with_threads(2, lambda: K.checksum64(data)) == want
    for at in (0, 7, 1 << 19, (1 << 20) + 44):
        flipped = data.copy()
        flipped[at] ^= 1
        assert K.checksum64(flipped) != want, at
    assert K.checksum64(data[:0]) == checksum64_reference(b"")


def test_vectorised_exp_accuracy():
    x = np.linspace(-87.0, 88.0, 1_000_003, dtype=np.float32)
    got = K.vexp(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got / want - 1)) < 3e-7
    assert K.vexp(np.array([-100.0, -1e30], np.float32)).tolist() == [0.0, 0.0]


def test_rng_stream_is_uniform_and_reproducible():
    u = K.rand_uniform(123, 200_000)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    assert np.array_equal(u, K.rand_uniform(123, 200_000))
    assert not np.array_equal(u[:100], K.rand_uniform(124, 100))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 7, 13), (2, 5, 3), (3, 4, 8), (5, 9, 769),
                                   (7, 130, 60), (37, 257, 768), (64, 65, 3072)])
def test_gemm_rowinv_is_row_invariant(m, n, k):
    """Each element of gemm_rowinv is its plain reference (bit for bit), so a
    row's result does not depend on the rows beside it, nor on the threads;
    pgllm_gemm's few-rows path (M <= 4) is the same product."""
    rng = np.random.default_rng(m * 1000 + n + k)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    want = np.zeros((m, n), np.float32)
    K.gemm_rowinv(a, b, want, bias, reference=True)
    expect = a.astype(np.float64) @ b.T.astype(np.float64) + bias
    assert np.max(np.abs(want - expect)) <= 1e-5 * max(1.0, np.abs(expect).max()) * np.sqrt(k)
    for threads in (1, 2):
        got = np.zeros((m, n), np.float32)
        run_with_threads(threads, lambda: K.gemm_rowinv(a, b, got, bias))
        assert np.array_equal(got, want)
    for i in range(m):
        one = np.zeros((1, n), np.float32)
        K.gemm_rowinv(a[i:i + 1].copy(), b, one, bias)
        assert np.array_equal(one[0], want[i])
        K.gemm(a[i:i + 1].copy(), b, one, transB=True, bias=bias)
        assert np.array_equal(one[0], want[i])
    acc = np.ones((m, n), np.float32)
    K.gemm_rowinv(a, b, acc, bias, accumulate=True)
    assert np.allclose(acc, want + 1, atol=1e-5)


@pytest.mark.parametrize("config", [(2, 3, 60, 100, 301), (1, 2, 128, 100, 97)],
                         ids=["head_size_20", "head_size_64"])
def test_a_prompt_attends_as_its_tokens_decoded_one_by_one(config):
    """The blocked attention of a prompt (query blocks, key tiles, value
    blocks) gives every position what decoding it alone gives: the same
    scores, softmax and sums in the same order.  Where the forward's GEMMs
    are row-invariant too (up to 64 rows on AVX2), whole logits are equal
    bit for bit."""
    n_layer, n_head, n_embd, n_pos, vocab = config
    _, total = K.gpt2_param_sizes(*config)
    params = np.empty(total, np.float32)
    K.gpt2_init(params, *config, 4)
    ids = np.random.default_rng(1).integers(0, vocab, n_pos).astype(np.int32)
    per_seq = n_layer * 2 * n_pos * n_embd
    one_by_one = np.zeros(per_seq, np.float32)
    want = np.empty((n_pos, vocab), np.float32)
    for t in range(n_pos):
        K.gpt2_forward_cached(params, config, ids[t:t + 1], 1, 1, t, one_by_one, n_pos, want[t])
    kv = np.zeros(per_seq, np.float32)
    got = np.empty((n_pos, vocab), np.float32)
    # 60 positions, then 40 more after them: two query blocks, two value blocks
    K.gpt2_forward_cached(params, config, ids[:60], 1, 60, 0, kv, n_pos, got[:60].reshape(-1), True)
    K.gpt2_forward_cached(params, config, ids[60:], 1, 40, 60, kv, n_pos, got[60:].reshape(-1), True)
    if K.cpu_has_avx512():      # the packed GEMM there from 5 rows: equal to rounding
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        assert np.array_equal(got, want)
        assert np.array_equal(kv, one_by_one)


def test_forward_rows_equals_each_sequence_alone():
    """One batched decoding step over sequences of different lengths gives
    each the logits of forward_cached over that sequence alone, bit for bit."""
    config = (2, 3, 60, 40, 301)                 # n_layer, n_head, n_embd, n_positions, vocab
    n_layer, n_head, n_embd, n_pos, vocab = config
    _, total = K.gpt2_param_sizes(*config)
    params = np.empty(total, np.float32)
    K.gpt2_init(params, *config, 9)
    rng = np.random.default_rng(3)
    kv_cap = 30
    per_slot = n_layer * 2 * kv_cap * n_embd
    lengths = {0: 1, 2: 17, 3: 5, 4: 29, 5: 9}   # slot -> positions cached (slot 1 is free)
    kv = np.zeros(6 * per_slot, np.float32)
    seqs, want = {}, {}
    for s, n in lengths.items():
        ids = rng.integers(0, vocab, n + 1).astype(np.int32)
        seqs[s] = ids
        solo = np.zeros(per_slot, np.float32)
        logits = np.empty(vocab, np.float32)
        K.gpt2_forward_cached(params, config, ids[:n], 1, n, 0, solo, kv_cap, logits)
        kv[s * per_slot:(s + 1) * per_slot] = solo
        K.gpt2_forward_cached(params, config, ids[n:], 1, 1, n, solo, kv_cap, logits)
        want[s] = logits.copy()
    order = [3, 0, 5, 4, 2]                      # 5 rows: past pgllm_gemm's few-rows path
    logits = np.empty(len(order) * vocab, np.float32)
    K.gpt2_forward_rows(params, config, np.array([seqs[s][-1] for s in order], np.int32),
                        np.array(order, np.int64), np.array([lengths[s] for s in order], np.int64),
                        kv, kv_cap, logits)
    for r, s in enumerate(order):
        assert np.array_equal(logits[r * vocab:(r + 1) * vocab], want[s]), s
    with pytest.raises(ValueError, match="distinct"):
        K.gpt2_forward_rows(params, config, np.array([1, 2], np.int32), np.array([0, 0], np.int64),
                            np.array([1, 2], np.int64), kv, kv_cap, np.empty(2 * vocab, np.float32))
