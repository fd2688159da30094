"""Plain NumPy loops of MSAM, GSAM and F-SAM, written from their papers.

Float64, parameters as dicts of arrays, on the family's logistic regression
(:mod:`tests.optimizers.family_reference`); each returns the weights after
every step and the gradient passes each step took. MSAM also returns the
held (perturbed) points, which the optax loop holds.
"""

import numpy as np

from tests.optimizers.family_reference import at
from tests.optimizers.family_reference import numpy_grad
from tests.optimizers.family_reference import vdot
from tests.optimizers.graphsam_reference import add
from tests.optimizers.graphsam_reference import global_norm
from tests.optimizers.graphsam_reference import normalized
from tests.optimizers.graphsam_reference import scaled


def _zeros(w):
  return {k: np.zeros_like(v) for k, v in w.items()}


def _unit(tree):
  """tree / ||tree||, zeros for a zero tree (the library's guard)."""
  n = global_norm(tree)
  return scaled(tree, 1.0 / n) if n > 0 else _zeros(tree)


def msam(w, base, steps, rho, momentum_decay=0.9):
  """Becker et al.: gradient at w - rho m/||m||, base step at w.

  ``m`` is the base's own first moment (``base.m`` after its step: Adam's
  EMA, momentum SGD's trace) or, for a base without one, an EMA of the
  gradients with ``momentum_decay``. Returns clean weights, held points
  ``w - rho_{t+1} m/||m||`` and passes.
  """
  clean, held, own = [], [], _zeros(w)
  delta = _zeros(w)
  for t in range(steps):
    g = numpy_grad(add(w, delta), t)
    w = base.step(w, g)
    if hasattr(base, "m"):
      m = base.m
    else:
      own = add(scaled(own, momentum_decay), g, 1 - momentum_decay)
      m = own
    delta = scaled(_unit(m), -at(rho, t + 1))
    clean.append(w)
    held.append(add(w, delta))
  return clean, held, [1] * steps


def gsam(w, base, steps, rho, alpha):
  """Zhuang et al.: g_p at w + rho g/||g||, update g_p - alpha g_perp with
  g_perp the part of g orthogonal to g_p."""
  history, passes = [], []
  for t in range(steps):
    g = numpy_grad(w, t)
    r = at(rho, t)
    if r == 0:
      d, n = g, 1
    else:
      g_p = numpy_grad(add(w, normalized(g), r), t)
      g_perp = add(g, g_p, -vdot(g, g_p) / vdot(g_p, g_p))
      d, n = add(g_p, g_perp, -alpha), 2
    w = base.step(w, d)
    history.append(w)
    passes.append(n)
  return history, passes


def fsam(w, base, steps, rho, sigma, ema_decay, *, use_previous=False):
  """Li et al.: m_t = lambda m_{t-1} + (1-lambda) g_t (m_0 = 0), perturb
  along g - sigma m_t. ``use_previous``: the authors' code, g - sigma m_{t-1}
  with m started at the first gradient."""
  history, passes, m = [], [], _zeros(w)
  for t in range(steps):
    g = numpy_grad(w, t)
    if use_previous:
      removed = m
      m = g if t == 0 else add(scaled(m, ema_decay), g, 1 - ema_decay)
    else:
      m = add(scaled(m, ema_decay), g, 1 - ema_decay)
      removed = m
    d = add(g, removed, -sigma)
    r = at(rho, t)
    if r == 0:
      gs, n = g, 1
    else:
      gs, n = numpy_grad(add(w, _unit(d), r), t), 2
    w = base.step(w, gs)
    history.append(w)
    passes.append(n)
  return history, passes
