"""Plain NumPy loops of GraphSAM, written from the reference notes' pseudocode.

Float64 throughout, parameters as dicts of arrays, no jax: the references the
optax implementation is compared against, step by step.
"""

import numpy as np


def global_norm(tree):
  return np.sqrt(sum(np.sum(v**2) for v in tree.values()))


def add(a, b, scale=1.0):
  return {k: a[k] + scale * b[k] for k in a}


def scaled(tree, factor):
  return {k: factor * v for k, v in tree.items()}


def normalized(tree):
  return scaled(tree, 1.0 / global_norm(tree))


class SGD:
  def __init__(self, lr):
    self.lr = lr

  def step(self, w, g):
    return add(w, g, -self.lr)


class MomentumSGD:
  """optax.sgd(lr, momentum): trace = g + mu trace, w -= lr trace."""

  def __init__(self, lr, momentum=0.9):
    self.lr, self.mu = lr, momentum
    self.m = None

  def step(self, w, g):
    if self.m is None:
      self.m = {k: np.zeros_like(v) for k, v in w.items()}
    self.m = add(g, self.m, self.mu)
    return add(w, self.m, -self.lr)


class Adam:
  """optax.adam: bias-corrected moments, eps outside the square root."""

  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
    self.m = self.v = None
    self.t = 0

  def step(self, w, g):
    if self.m is None:
      self.m = {k: np.zeros_like(v) for k, v in w.items()}
      self.v = {k: np.zeros_like(v) for k, v in w.items()}
    self.t += 1
    out = {}
    for k in w:
      self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g[k]
      self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g[k] ** 2
      m_hat = self.m[k] / (1 - self.b1**self.t)
      v_hat = self.v[k] / (1 - self.b2**self.t)
      out[k] = w[k] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
    return out


def graphsam_paper(
  w, grad, base, steps, anchor_every, rho, beta, *, normalize_anchor, second
):
  """§1 of the reference notes; returns the clean weights after every step.

  Args:
    w: initial weights (dict of arrays).
    grad: grad(w, t) -> gradient of step t's minibatch loss at w.
    base: SGD or Adam instance.
    steps: number of steps.
    anchor_every: k; step t anchors when t % k == 0.
    rho: rho(t) -> radius at step t.
    beta: EMA decay.
    normalize_anchor: normalize the anchor gradient before the EMA (the
      library default) or keep it raw (the paper's pseudocode).
    second: evaluate the updating gradient at the anchored perturbation
      (grad_fn given); otherwise the anchor step updates with the true
      gradient.
  """
  history, eps, omega = [], None, None
  for t in range(steps):
    if t % anchor_every == 0:
      g = grad(w, t)
      eps = normalized(g) if normalize_anchor else g
      if second:
        omega = grad(add(w, normalized(eps), rho(t)), t)
      else:
        omega = g
    else:
      eps = add(scaled(eps, beta), normalized(omega), 1 - beta)
      omega = grad(add(w, normalized(eps), rho(t)), t)
    w = base.step(w, omega)
    history.append(w)
  return history


def sam(w, grad, base, steps, rho):
  """SAM (Foret et al.): eps = rho g/||g||, update with the gradient there."""
  history = []
  for t in range(steps):
    g = grad(w, t)
    w = base.step(w, grad(add(w, normalized(g), rho), t))
    history.append(w)
  return history


def _clip_leaf(v, radius):
  norm = np.linalg.norm(v)
  return v if norm <= radius else v * radius / norm


def graphsam_authors_code(
  w, grad, base, steps, steps_per_epoch, rho, beta, radius, *, loss=None
):
  """§3 of the reference notes, with the anchor's second pass.

  Args:
    w, grad, base, steps: as in graphsam_paper.
    steps_per_epoch: the code anchors at the first step of every epoch.
    rho: rho(t), the scale of the anchor perturbation.
    beta: EMA decay.
    radius: radius(t), the per-tensor clip radius (the code's `radius`).
    loss: loss(w, t); when given, every pass at a perturbed point is seeded
      with the loss value, L * grad L, as the code's backward(loss) does
      (item 4), while the anchor's own pass stays a plain gradient.
  """

  def seeded(v, t):
    g = grad(v, t)
    return g if loss is None else scaled(g, loss(v, t))

  history, h, omega = [], None, None
  for t in range(steps):
    r, clip = rho(t), radius(t)
    if t % steps_per_epoch == 0:
      g = grad(w, t)
      h = g
      # ASAM scale with w^2 (eta 0), then each tensor clipped to radius.
      denom = np.sqrt(sum(np.sum((w[k] * g[k]) ** 2) for k in w)) + 1e-12
      delta = {k: _clip_leaf(r * w[k] ** 2 * g[k] / denom, clip) for k in w}
    else:
      h = {
        k: beta * h[k] + (1 - beta) * omega[k] / np.linalg.norm(omega[k] + 1e-8)
        for k in h
      }
      # The code divides by the norm of zeroed gradients: every tensor clips.
      delta = {
        k: clip * w[k] ** 2 * h[k] / np.linalg.norm(w[k] ** 2 * h[k]) for k in w
      }
    omega = seeded(add(w, delta), t)
    w = base.step(w, omega)
    history.append(w)
  return history
