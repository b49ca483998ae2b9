"""Post-refinement: partialities of still-shot observations and the merge that divides them out.

A still records a fraction ``p`` (the partiality) of each reflection's intensity,
``I_obs ≈ G exp(-2 B s²) p I_full`` (crystal scale ``G``, relative B factor, ``s =
1/(2d)``). Monte Carlo merging (partialator's ``unity`` model) averages ``p`` away: the
mean of many observations converges to ``<p> I_full``. It converges slowly where the
partialities spread most: at low angle a lattice point is narrow (its width grows with
``|q|`` through the mosaic spread) and the spectrum barely widens the Ewald sphere there
(the spread grows as ``2 sin²θ``), so low-angle reflections are either nearly full or
nearly missed, and their Monte Carlo means are the noisiest of the data set even though
these are the strongest reflections. That is why CC to the true intensities and CC1/2
of unity-model data dip at low resolution.

Post-refinement models ``p`` and refines, per crystal, what it depends on, against the
merged intensities, then merges again dividing the model out (as partialator's
``xsphere`` and ``offset`` models, CrystFEL's post-refinement; White 2014, White et al.
2016):

* **excitation error** ``ε = k0 - |U g + k0 ẑ|`` (:func:`sxlab.reciprocal.excitation_error`)
  of each observation's lattice point ``g = hkl @ A`` of its crystal (indexed basis
  ``A``), after a small rotation ``U`` of the crystal about the lab x and y axes (a
  rotation about the beam does not change ``ε``);
* **lattice-point profile**: variance ``σ_r² = f_c² (a + η² |q|²)``: a size term ``a``
  and a mosaic term ``η`` shared by the data set, scaled per crystal by ``f_c``;
* **spectrum**: a Gaussian of width ``σ_k`` (1/Å), seen through the slope ``2 sin²θ``
  of the excitation error (:func:`sxlab.reciprocal.effective_variance`);
* **model** ``"gaussian"``: ``p = exp(-ε² / (2 σ_eff²))``
  (:func:`sxlab.reciprocal.partiality_gaussian`); ``"xsphere"``: the swept fraction of
  a uniform ball of radius ``2 σ_r`` through the band of Ewald spheres ``±2 σ_k g``
  (:func:`sxlab.reciprocal.partiality_xsphere`).

Refinement: each cycle merges (a weighted least-squares estimate of the full intensity
of every unique reflection, ``I = Σ w q I_obs / Σ w q²`` with ``q = G exp(-2Bs²) p``),
then takes Gauss–Newton steps for every crystal's ``(log G, B, ω_x, ω_y, log f_c)``
(normal equations accumulated per crystal and solved as a batch of 5 × 5 systems) and
for the shared ``(log a, log η, log σ_k)``. Observation weights are ``1 / (σ² + (κ m)²)``
with ``m`` the model intensity and ``κ`` the robust relative scatter of strong
observations about it. Derivatives are central differences, each evaluated for all
observations at once.

Examples
--------
>>> p = partiality(np.array([0.0, 1e-4]), np.array([0.01, 0.01]), 1.0,
...                np.array([1.0, 1.0]), a=1e-9, eta=1e-3, sigma_k=0.0)
>>> p.round(3).tolist()  # σ_r = sqrt(1e-9 + (1e-3 · 0.1)²) = 1.05e-4 1/Å
[1.0, 0.635]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reciprocal import (
    effective_variance,
    ewald_slope,
    excitation_error,
    partiality_gaussian,
    partiality_xsphere,
)

__all__ = ["MODELS", "PostRefinement", "partiality", "weighted_merge"]

#: Partiality models of post-refinement (``unity``: no model, Monte Carlo).
MODELS = ("unity", "gaussian", "xsphere")

_MIN_SIGMA = 1e-7          # 1/Å: floor of profile and spectral widths


def partiality(eps, q2, k0: float, f, *, a: float, eta: float, sigma_k: float,
               model: str = "gaussian") -> np.ndarray:
    """Partiality of observations with excitation errors ``eps`` (see the module notes).

    Parameters
    ----------
    eps, q2 : ndarray
        Excitation error (1/Å) and ``|q|²`` (1/Å²) of each observation.
    k0 : float
        Nominal wavenumber (1/Å).
    f : ndarray
        Profile scale of each observation's crystal.
    a, eta, sigma_k : float
        Size variance (1/Å²), mosaic spread (rad), spectral width (1/Å).
    model : {"gaussian", "xsphere"}
    """
    var_r = f * f * (a + eta * eta * q2)
    g = ewald_slope(q2, k0)
    if model == "gaussian":
        return partiality_gaussian(eps, var_r, g, sigma_k)
    if model == "xsphere":
        return partiality_xsphere(eps, 2.0 * np.sqrt(var_r), 2.0 * sigma_k * g)
    raise ValueError(f"partiality model must be one of {MODELS[1:]}, got {model!r}")


def weighted_merge(group, intensity, sigma, factor, weight, n_groups):
    """Least-squares full intensities: ``I = Σ w q I_obs / Σ w q²`` per group.

    Parameters
    ----------
    group : ndarray of int
        Unique reflection of each observation (``n_groups - 1`` or beyond: none).
    intensity, sigma : ndarray
    factor : ndarray
        ``q = G exp(-2 B s²) p`` of each observation.
    weight : ndarray
        ``w``, e.g. ``1 / (σ² + (κ m)²)``.
    n_groups : int

    Returns
    -------
    n, mean, sig : ndarray
        Observations, intensity and its σ per group: ``sqrt(max(1 / Σ w q², χ² / Σ w q²))``
        with ``χ²`` the reduced weighted scatter of the group's observations (1 and
        below: counting error only).

    Examples
    --------
    >>> n, m, s = weighted_merge(np.array([0, 0, 1]), np.array([2.0, 4.0, 3.0]),
    ...                          np.ones(3), np.array([0.5, 1.0, 1.0]), np.ones(3), 2)
    >>> n.tolist(), m.round(3).tolist()
    ([2, 1], [4.0, 3.0])
    """
    n = np.bincount(group, minlength=n_groups)
    sw = np.bincount(group, weights=weight * factor * factor, minlength=n_groups)
    sy = np.bincount(group, weights=weight * factor * intensity, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sy / sw
        res = intensity - factor * mean[group]
        chi = np.bincount(group, weights=weight * res * res, minlength=n_groups)
        reduced = np.where(n > 1, chi / np.maximum(n - 1, 1), 1.0)
        sig = np.sqrt(np.maximum(reduced, 1.0) / sw)
    return n, mean, sig


def _rotations_xy(omega: np.ndarray) -> np.ndarray:
    """Rotation matrices of rotation vectors ``(ω_x, ω_y, 0)``, shape (C, 3, 3)."""
    theta = np.hypot(omega[:, 0], omega[:, 1])
    safe = np.where(theta > 0, theta, 1.0)
    kx, ky = omega[:, 0] / safe, omega[:, 1] / safe
    c, s = np.cos(theta), np.sin(theta)
    out = np.empty((len(omega), 3, 3))
    out[:, 0, 0] = c + kx * kx * (1 - c)
    out[:, 0, 1] = kx * ky * (1 - c)
    out[:, 0, 2] = ky * s
    out[:, 1, 0] = kx * ky * (1 - c)
    out[:, 1, 1] = c + ky * ky * (1 - c)
    out[:, 1, 2] = -kx * s
    out[:, 2, 0] = -ky * s
    out[:, 2, 1] = kx * s
    out[:, 2, 2] = c
    return out


@dataclass
class PostRefinement:
    """Per-crystal and shared parameters of the partiality model, refined against merges.

    Parameters
    ----------
    crystal : ndarray of int (N,)
        Crystal (0..C-1) of each observation.
    g : ndarray (N, 3)
        Lattice point of each observation in the lab frame at the indexed orientation
        (1/Å).
    s2 : ndarray (N,)
        ``1 / (4 d²)``.
    intensity, sigma : ndarray (N,)
    group : ndarray of int (N,)
        Unique reflection of each observation (``n_groups``: not merged).
    n_groups : int
    k0 : float
        Nominal wavenumber (1/Å).
    sigma_k : float
        Starting spectral width (1/Å), e.g. bandwidth × k0.
    model : {"gaussian", "xsphere"}

    Attributes
    ----------
    log_g, b, omega, log_f : ndarray
        Per crystal: log scale, relative B (Å²), rotation about lab x and y (rad), log
        profile scale.
    a, eta, sigma_k : float
        Shared size variance (1/Å²), mosaic spread (rad) and spectral width (1/Å).
    """

    crystal: np.ndarray
    g: np.ndarray
    s2: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    group: np.ndarray
    n_groups: int
    k0: float
    sigma_k: float
    model: str = "gaussian"

    def __post_init__(self):
        c = int(self.crystal.max()) + 1 if len(self.crystal) else 0
        self.n_crystals = c
        self.log_g = np.zeros(c)
        self.b = np.zeros(c)
        self.omega = np.zeros((c, 2))
        self.log_f = np.zeros(c)
        self.rot = np.tile(np.eye(3), (c, 1, 1))
        self.q2 = np.sum(self.g * self.g, axis=1)
        self.sigma_k = max(float(self.sigma_k), _MIN_SIGMA)
        # shared profile: start at the spread of the indexed excitation errors
        eps = excitation_error(self.g, self.k0)
        spread = float(np.median(np.abs(eps))) / 0.6745 if len(eps) else 1e-4
        self.a = max(0.25 * spread * spread, _MIN_SIGMA ** 2)
        self.eta = max(spread / max(float(np.sqrt(np.median(self.q2))), 1e-3) * 0.8, 1e-6)
        self.kappa = 0.3
        self.history: list[float] = []

    # ------------------------------------------------------------------ model
    def _eps(self, omega=None) -> np.ndarray:
        rot = self.rot if omega is None else _rotations_xy(omega) @ self.rot
        g = np.einsum("nij,nj->ni", rot[self.crystal], self.g)
        return excitation_error(g, self.k0)

    def factor(self, log_g=None, b=None, omega=None, log_f=None, shared=None):
        """``q = G exp(-2 B s²) p`` of every observation (current parameters by default)."""
        log_g = self.log_g if log_g is None else log_g
        b = self.b if b is None else b
        log_f = self.log_f if log_f is None else log_f
        a, eta, sk = (self.a, self.eta, self.sigma_k) if shared is None else shared
        c = self.crystal
        p = partiality(self._eps(omega), self.q2, self.k0, np.exp(log_f[c]), a=a, eta=eta,
                       sigma_k=sk, model=self.model)
        return np.exp(log_g[c] - 2.0 * b[c] * self.s2) * p

    def partialities(self) -> np.ndarray:
        """Model partiality of every observation."""
        return partiality(self._eps(), self.q2, self.k0, np.exp(self.log_f[self.crystal]),
                          a=self.a, eta=self.eta, sigma_k=self.sigma_k, model=self.model)

    # ------------------------------------------------------------------ steps
    def merge(self, use: np.ndarray, reference: np.ndarray | None = None,
              min_partiality: float = 0.05):
        """Full intensities of the observations ``use`` with the current model.

        Weights ``1 / (σ² + (κ m)²)`` with ``m`` the model of each observation from
        ``reference`` (``1 / σ²`` without one); observations of partiality below
        ``min_partiality`` are left out. Returns ``(n, mean, sig)`` per group (see
        :func:`weighted_merge`).
        """
        q = self.factor()
        use = use & (self.group < self.n_groups) & np.isfinite(q)
        use &= self.partialities() >= min_partiality
        if reference is None:
            w = 1.0 / self.sigma ** 2
        else:
            ref = np.append(reference, np.nan)[np.minimum(self.group, self.n_groups)]
            w = self._weights(q * np.where(np.isfinite(ref), np.maximum(ref, 0.0), 0.0))
        gg = np.where(use, self.group, self.n_groups)
        return weighted_merge(gg, self.intensity, self.sigma, q, w, self.n_groups + 1)

    def _weights(self, model_i: np.ndarray) -> np.ndarray:
        return 1.0 / (self.sigma ** 2 + (self.kappa * model_i) ** 2)

    def _crystal_cost(self, ref, use) -> np.ndarray:
        model = np.where(use, self.factor() * ref, 0.0)
        w = np.where(use, self._weights(model), 0.0)
        r = np.where(use, self.intensity - model, 0.0)
        return np.bincount(self.crystal, weights=w * r * r, minlength=self.n_crystals)

    def refine(self, reference: np.ndarray, active: np.ndarray, *, steps: int = 3,
               max_b: float = 100.0):
        """Gauss–Newton steps of every active crystal's and the shared parameters.

        ``reference`` holds the full intensity of each group (NaN: not a reference).
        """
        ref = np.append(reference, np.nan)[np.minimum(self.group, self.n_groups)]
        use = active[self.crystal] & np.isfinite(ref) & (ref > 0)
        c = self.crystal
        n_c = self.n_crystals
        for _ in range(steps):
            model = self.factor() * ref
            strong = use & (model > 5 * self.sigma)
            if np.count_nonzero(strong) > 50:
                ratio = np.abs(self.intensity[strong] - model[strong]) / model[strong]
                self.kappa = float(np.clip(1.4826 * np.median(ratio), 0.02, 1.0))
            w = np.where(use, self._weights(model), 0.0)
            r = np.where(use, self.intensity - model, 0.0)
            cost = float(np.sum(w * r * r))
            self.history.append(cost)
            # per crystal: log G, B, ω_x, ω_y, log f
            cols = []
            h = 1e-4
            for name in ("log_g", "b", "omega0", "omega1", "log_f"):
                cols.append(self._derivative(name, h if name != "b" else 0.05, ref))
            jac = np.where(use[:, None], np.stack(cols, axis=1), 0.0)     # (N, 5)
            jw = jac * w[:, None]
            hmat = np.zeros((n_c, 5, 5))
            for i in range(5):
                for j in range(i, 5):
                    v = np.bincount(c, weights=jw[:, i] * jac[:, j], minlength=n_c)
                    hmat[:, i, j] = hmat[:, j, i] = v
            grad = np.stack([np.bincount(c, weights=jw[:, i] * r, minlength=n_c)
                             for i in range(5)], axis=1)
            diag = np.einsum("cii->ci", hmat)
            damped = hmat + (1e-3 * diag + 1e-12)[:, :, None] * np.eye(5)
            ok = active & np.all(np.isfinite(damped), axis=(1, 2))
            step = np.zeros((n_c, 5))
            if ok.any():
                step[ok] = np.linalg.solve(damped[ok], grad[ok][:, :, None])[:, :, 0]
            step[:, 2:4] = np.clip(step[:, 2:4], -2e-3, 2e-3)     # rad per step
            step[:, [0, 4]] = np.clip(step[:, [0, 4]], -0.5, 0.5)
            before = self._crystal_cost(ref, use)
            saved = (self.log_g.copy(), self.b.copy(), self.rot.copy(), self.omega.copy(),
                     self.log_f.copy())
            self.log_g += step[:, 0]
            self.b = np.clip(self.b + step[:, 1], -max_b, max_b)
            self.rot = _rotations_xy(step[:, 2:4]) @ self.rot
            self.omega += step[:, 2:4]
            self.log_f = np.clip(self.log_f + step[:, 4], -2.0, 2.0)
            worse = self._crystal_cost(ref, use) > before
            # a crystal whose fit got worse keeps its parameters
            self.log_g[worse], self.b[worse] = saved[0][worse], saved[1][worse]
            self.rot[worse], self.omega[worse] = saved[2][worse], saved[3][worse]
            self.log_f[worse] = saved[4][worse]
            # the mean profile scale belongs to the shared widths (f is relative)
            if active.any():
                shift = float(np.mean(self.log_f[active]))
                self.log_f[active] -= shift
                self.a *= np.exp(2.0 * shift)
                self.eta *= np.exp(shift)
            self._shared_step(ref, use)
        # keep the scale of the mean crystal: geometric-mean G of 1, mean B of 0
        if active.any():
            self.log_g[active] -= np.mean(self.log_g[active])
            self.b[active] -= np.mean(self.b[active])

    def _derivative(self, name: str, h: float, ref: np.ndarray) -> np.ndarray:
        def shifted(delta):
            kw = {}
            if name == "log_g":
                kw["log_g"] = self.log_g + delta
            elif name == "b":
                kw["b"] = self.b + delta
            elif name == "log_f":
                kw["log_f"] = self.log_f + delta
            else:
                om = np.zeros((self.n_crystals, 2))
                om[:, int(name[-1])] = delta
                kw["omega"] = om
            return self.factor(**kw) * ref

        return (shifted(h) - shifted(-h)) / (2 * h)

    def _shared_step(self, ref, use):
        """One Gauss–Newton step of ``(log a, log η, log σ_k)`` over all observations."""
        shared = np.log([self.a, self.eta, self.sigma_k])
        model = self.factor() * ref
        w = np.where(use, self._weights(model), 0.0)
        r = np.where(use, self.intensity - model, 0.0)
        h = 1e-3
        cols = []
        for j in range(3):
            up, down = shared.copy(), shared.copy()
            up[j] += h
            down[j] -= h
            cols.append((self.factor(shared=tuple(np.exp(up))) * ref
                         - self.factor(shared=tuple(np.exp(down))) * ref) / (2 * h))
        jac = np.where(use[:, None], np.stack(cols, axis=1), 0.0)
        hmat = (jac * w[:, None]).T @ jac
        grad = (jac * w[:, None]).T @ r
        try:
            step = np.linalg.solve(hmat + 1e-3 * np.diag(np.diag(hmat)) + 1e-12 * np.eye(3),
                                   grad)
        except np.linalg.LinAlgError:
            return
        step = np.clip(step, -0.5, 0.5)
        cost = float(np.sum(w * r * r))
        new = tuple(np.exp(shared + step))
        model_new = self.factor(shared=new) * ref
        r_new = np.where(use, self.intensity - model_new, 0.0)
        if float(np.sum(w * r_new * r_new)) < cost:
            self.a = max(float(new[0]), _MIN_SIGMA ** 2)
            self.eta = max(float(new[1]), 1e-7)
            self.sigma_k = max(float(new[2]), _MIN_SIGMA)

    def effective_width(self, q2) -> np.ndarray:
        """``σ_eff`` (1/Å) of the mean crystal at ``|q|²``."""
        return np.sqrt(effective_variance(self.a + self.eta ** 2 * np.asarray(q2),
                                          ewald_slope(q2, self.k0), self.sigma_k))
