"""LARS, LAMB, Lion, Shampoo and SOAP follow their update equations, in float64 (survey §5)."""

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.optimizers.large_batch import LAMB, LARS, split_1d
from nnopt.plugins.optimizers.library import SOAP, Lion, Shampoo

CPU = torch.device("cpu")
G = torch.Generator().manual_seed(0)
A = torch.randn(3, 3, generator=G, dtype=torch.float64)
TARGET = torch.randn(3, 2, generator=G, dtype=torch.float64)


def loss_of(w, b):
    """A small non-quadratic problem: a weight matrix w (3×2) and a bias vector b (2)."""
    out = torch.tanh(A @ w) + b
    return ((out - TARGET) ** 2).sum()


def grads(w, b):
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    return torch.autograd.grad(loss_of(w, b), (w, b))


W0 = torch.randn(3, 2, generator=G, dtype=torch.float64)
B0 = torch.randn(2, generator=G, dtype=torch.float64)


def run(component, steps, groups=None):
    w, b = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(B0.clone())
    opt = component.build(groups(w, b) if groups else [w, b], CPU)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(w, b).backward()
        opt.step()
    return w.detach(), b.detach(), opt


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_lars_trust_ratio_on_matrices_plain_momentum_on_vectors():
    lr, mu, eta, wd = 0.5, 0.9, 0.01, 0.1
    w, b, bw, bb = W0.clone(), B0.clone(), torch.zeros_like(W0), torch.zeros_like(B0)
    for _ in range(2):
        gw, gb = grads(w, b)
        trust = eta * w.norm() / (gw.norm() + wd * w.norm())
        bw = mu * bw + trust * (gw + wd * w)
        bb = mu * bb + gb  # the bias: λ = 1, no weight decay
        w, b = w - lr * bw, b - lr * bb
    got_w, got_b, _ = run(LARS(LARS.Params(lr=lr, momentum=mu, trust_coefficient=eta, weight_decay=wd)), 2)
    close(got_w, w)
    close(got_b, b)


def test_lamb_paper_form_with_1d_excluded():
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.99), 1e-6, 0.1
    w, b = W0.clone(), B0.clone()
    mw, vw, mb, vb = (torch.zeros_like(t) for t in (W0, W0, B0, B0))
    for t in (1, 2):
        gw, gb = grads(w, b)
        mw, vw = b1 * mw + (1 - b1) * gw, b2 * vw + (1 - b2) * gw**2
        mb, vb = b1 * mb + (1 - b1) * gb, b2 * vb + (1 - b2) * gb**2
        r = mw / (vw.sqrt() + eps) + wd * w
        trust = w.norm().clamp(max=10.0) / (r.norm() + eps)
        step = lr / (1 - b1**t)  # the library corrects the first moment's bias through the step size
        w = w - step * trust * r
        b = b - step * mb / (vb.sqrt() + eps)  # trust 1, λ = 0
    got_w, got_b, opt = run(LAMB(LAMB.Params(lr=lr, betas=[b1, b2], eps=eps, weight_decay=wd)), 2)
    close(got_w, w)
    close(got_b, b)
    assert [g["adam"] for g in opt.param_groups] == [False, True]


def test_lamb_without_exclusion_scales_the_bias_too():
    _, got_b, _ = run(LAMB(LAMB.Params(lr=0.01, exclude_1d=False)), 1)
    _, plain_b, _ = run(LAMB(LAMB.Params(lr=0.01)), 1)
    assert not torch.allclose(got_b, plain_b)


def test_split_1d_keeps_each_groups_options():
    w, b, c = torch.zeros(2, 2), torch.zeros(2), torch.zeros(3, 1)  # shapes only
    out = split_1d([{"params": [w, b], "lr": 0.5}, {"params": [c], "weight_decay": 0.0}], adam=True)
    assert [(len(g["params"]), g.get("lr"), g.get("adam")) for g in out] == [(1, 0.5, None), (1, 0.5, True), (1, None, None)]


def test_lion_moves_every_coordinate_by_lr_sign():
    lr, (b1, b2), wd = 0.01, (0.9, 0.99), 0.1
    w, b, mw, mb = W0.clone(), B0.clone(), torch.zeros_like(W0), torch.zeros_like(B0)
    for _ in range(3):
        gw, gb = grads(w, b)
        w = w * (1 - lr * wd) - lr * torch.sign(b1 * mw + (1 - b1) * gw)
        b = b * (1 - lr * wd) - lr * torch.sign(b1 * mb + (1 - b1) * gb)
        mw, mb = b2 * mw + (1 - b2) * gw, b2 * mb + (1 - b2) * gb
    got_w, got_b, _ = run(Lion(Lion.Params(lr=lr, betas=[b1, b2], weight_decay=wd)), 3)
    close(got_w, w)
    close(got_b, b)


def _power(m, p):
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values**p) @ vectors.T


def test_shampoo_is_left_and_right_inverse_fourth_roots():
    lr, eps = 0.1, 1e-6
    w, b = W0.clone(), B0.clone()
    L, R, V = (eps * torch.eye(n, dtype=torch.float64) for n in (3, 2, 2))
    for _ in range(2):
        gw, gb = grads(w, b)
        L, R, V = L + gw @ gw.T, R + gw.T @ gw, V + torch.outer(gb, gb)
        w = w - lr * _power(L, -0.25) @ gw @ _power(R, -0.25)
        b = b - lr * _power(V, -0.5) @ gb  # a vector: full-matrix AdaGrad
    got_w, got_b, _ = run(Shampoo(Shampoo.Params(lr=lr, matrix_eps=eps)), 2)
    torch.testing.assert_close(got_w, w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_b, b, rtol=1e-6, atol=1e-6)


def test_soap_is_adam_in_the_eigenbasis_of_the_first_statistics():
    lr, (b1, b2), eps = 0.01, (0.9, 0.95), 1e-8
    g1, _ = grads(W0, B0)  # step 1 only sets up L, R and their eigenbases: no update
    ql, qr = torch.linalg.eigh(g1 @ g1.T)[1], torch.linalg.eigh(g1.T @ g1)[1]
    g2w, g2b = grads(W0, B0)
    m = (1 - b1) * g2w
    v = (1 - b2) * (ql.T @ g2w @ qr) ** 2
    step = lr * (1 - b2) ** 0.5 / (1 - b1)
    w = W0 - step * ql @ ((ql.T @ m @ qr) / (v.sqrt() + eps)) @ qr.T
    b = B0 - step * ((1 - b1) * g2b) / (((1 - b2) * g2b**2).sqrt() + eps)  # vectors: plain Adam
    got_w, got_b, _ = run(SOAP(SOAP.Params(lr=lr, betas=[b1, b2], eps=eps, weight_decay=0.0)), 2)
    torch.testing.assert_close(got_w, w, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(got_b, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("cls", "bad"), [(LARS, {"lr": 0}), (LAMB, {"betas": [0.9, 1.0]}), (Lion, {"weight_decay": -1.0}),
                                          (Shampoo, {"preconditioning_compute_steps": 0}), (SOAP, {"betas": [0.9]}),
                                          (LARS, {"exclude_1d": False})])
def test_params_are_validated(cls, bad):
    with pytest.raises(ValidationError):
        cls.Params(**bad)
