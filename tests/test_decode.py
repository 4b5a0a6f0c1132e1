"""The decoding kernels from Python (pyx/decode.pxi): beam search step by
step against a plain beam search written here, and the gradient-clip factor
training applies.  llm_beam_search runs the same kernel in the server
(test_generate.py)."""
import numpy as np
import pytest

from pg_llm_cy import kernels as K


class ToyModel:
    """Next-token logits that depend on the last token and the length, so
    beams differ and some end in eos."""

    def __init__(self, vocab, seed):
        rng = np.random.default_rng(seed)
        self.by_last = rng.standard_normal((vocab + 1, vocab)).astype(np.float32) * 2
        self.by_len = rng.standard_normal((64, vocab)).astype(np.float32)

    def __call__(self, tokens):
        last = tokens[-1] if tokens else -1
        return self.by_last[last] + self.by_len[len(tokens)]


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def reference_beam_search(model, width, max_tokens, vocab, eos, length_penalty):
    """HuggingFace-style beam search: each step keeps the best 2W continuations
    in order; eos ends a hypothesis, the rest fill the W live beams."""
    def score(logprob, n):
        return logprob / max(n, 1) ** length_penalty

    live, done = [(0.0, [])], []
    for _ in range(max_tokens):
        cand = []
        for b, (lp, toks) in enumerate(live):
            for t, v in enumerate(log_softmax(model(toks)) + lp):
                cand.append((-v, b * vocab + t, b, t))
        cand.sort()
        new = []
        for neg, _, b, t in cand[:2 * width]:
            if len(new) >= width:
                break
            if t == eos:
                done.append((score(-neg, len(live[b][1])), -neg, live[b][1]))
            else:
                new.append((-neg, live[b][1] + [t]))
        live = new
        done.sort(key=lambda h: -h[0])
        if not live or (len(done) >= width and
                        score(live[0][0], len(live[0][1])) < done[width - 1][0]):
            break
    done += [(score(lp, len(toks)), lp, toks) for lp, toks in live]
    done.sort(key=lambda h: -h[0])
    return done[:width]


def kernel_beam_search(model, width, max_tokens, vocab, eos, length_penalty):
    bs = K.BeamSearch(width, max_tokens, vocab, eos, length_penalty)
    steps = 0
    while True:
        logits = np.stack([model(toks) for _, toks in bs.beams])
        steps += 1
        if bs.step(logits):
            break
        assert all(0 <= p < width for p in bs.parent)
        assert bs.last == [toks[-1] for _, toks in bs.beams]
    return bs.finish(), steps


@pytest.mark.parametrize("width,max_tokens,eos,length_penalty,seed", [
    (1, 8, -1, 0.0, 0),
    (3, 6, -1, 1.0, 1),
    (4, 12, 5, 1.0, 2),
    (8, 10, 0, 0.6, 3),
    (5, 1, 2, 1.0, 4),
    (16, 20, 3, 2.0, 5),
])
def test_beam_search_matches_reference(width, max_tokens, eos, length_penalty, seed):
    vocab = 12
    model = ToyModel(vocab, seed)
    got, _ = kernel_beam_search(model, width, max_tokens, vocab, eos, length_penalty)
    want = reference_beam_search(model, width, max_tokens, vocab, eos, length_penalty)
    assert [h[2] for h in got] == [h[2] for h in want]
    np.testing.assert_allclose([h[0] for h in got], [h[0] for h in want], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([h[1] for h in got], [h[1] for h in want], rtol=1e-5, atol=1e-5)
    assert [h[0] for h in got] == sorted((h[0] for h in got), reverse=True)
    assert all(eos not in h[2] and len(h[2]) <= max_tokens for h in got)


def test_beam_width_one_is_greedy():
    vocab = 30
    model = ToyModel(vocab, 7)
    got, _ = kernel_beam_search(model, 1, 9, vocab, -1, 0.0)
    greedy = []
    for _ in range(9):
        greedy.append(int(np.argmax(model(greedy))))
    assert got[0][2] == greedy


def test_beam_search_stops_early_when_no_beam_can_win():
    # eos is almost certain after the first token: every hypothesis ends at
    # once, and no live beam can beat them -- the search stops long before
    # max_tokens
    vocab, eos = 10, 0
    model = ToyModel(vocab, 8)
    model.by_last[:vocab, eos] = 30.0          # not the prompt's row (-1)
    got, steps = kernel_beam_search(model, 2, 50, vocab, eos, 1.0)
    assert steps < 5
    assert all(len(h[2]) == 1 for h in got)
    want = reference_beam_search(model, 2, 50, vocab, eos, 1.0)
    assert [h[2] for h in got] == [h[2] for h in want]
    np.testing.assert_allclose([h[0] for h in got], [h[0] for h in want], rtol=1e-5)


def test_beam_search_keeps_only_the_best_finished():
    # eos is always among the top continuations: many hypotheses finish, the
    # state keeps only the best `width` of them, ranked
    vocab, eos = 6, 1
    model = ToyModel(vocab, 9)
    model.by_last[:, eos] = 1.5
    got, _ = kernel_beam_search(model, 3, 15, vocab, eos, 1.0)
    want = reference_beam_search(model, 3, 15, vocab, eos, 1.0)
    assert len(got) == 3 and [h[2] for h in got] == [h[2] for h in want]


def test_beam_search_bad_use():
    with pytest.raises(ValueError, match="positive"):
        K.BeamSearch(0, 5, 10)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        K.BeamSearch(64, 5, 2 ** 26)
    bs = K.BeamSearch(2, 1, 4)
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        bs.step(np.zeros((2, 4), np.float32))
    assert bs.step(np.zeros((1, 4), np.float32))          # max_tokens reached
    with pytest.raises(ValueError):
        bs.step(np.zeros((2, 4), np.float32))              # nothing left to step


@pytest.mark.parametrize("max_norm", [0.0, -1.0, 0.5, 1.0, 1e6])
def test_clip_scale(max_norm):
    g = np.random.default_rng(1).standard_normal(10000).astype(np.float32)
    scale, norm = K.clip_scale(g, max_norm)
    want_norm = np.sqrt((g.astype(np.float64) ** 2).sum())
    assert norm == pytest.approx(want_norm, rel=1e-12)
    # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (norm + 1e-6), clamped to 1
    want = 1.0 if max_norm <= 0 else min(1.0, max_norm / (want_norm + 1e-6))
    assert scale == pytest.approx(want, rel=1e-12)
    assert K.clip_scale(np.zeros(0, np.float32), 1.0) == (1.0, 0.0)
