"""Pixel evidence from the clean fields: where a field differs from what clean fields look like, per pixel.

Two scorers, both on the filter-bank features of :mod:`artseg_core.imgproc.features`, both giving a full-
resolution (H, W) map:

:class:`PixelEvidence` (image labels)
    A small per-pixel network trained to tell pixels of artifact fields from pixels of clean fields. This is
    positive-unlabelled learning (Elkan & Noto, KDD 2008): every pixel of a clean field is normal, a pixel of an
    artifact field is normal or artifact. Pixels that look like those of clean fields (cells, background) get
    about the class prior (~0.5 with balanced sampling); only pixels of kinds that never occur in clean fields
    approach 1. The clean fields, half of every labelled set, are what teaches the map what is *not* an
    artifact - the round dark cells that a classifier's saliency lands on are negatives here.
:class:`Normality` (clean fields only: the zero-label mode)
    A Gaussian mixture of the clean fields' pixel features; the score is the negative log-likelihood, scaled so
    that 1 is the clean fields' 99.9th percentile.

Pixels are sampled with :func:`~artseg_core.imgproc.features.sample_pixels` (uniform plus unusual pixels), so
small debris and thin fibres are not drowned by background. :func:`clean_field_threshold` chooses the
binarisation on held-out clean fields: the lowest threshold that leaves a given share of them without any object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from artseg_core.imgproc.features import pixel_features, sample_pixels

log = logging.getLogger(__name__)

#: the evidence map is smoothed with this Gaussian sigma (pixels) before it is thresholded
SMOOTH_SIGMA = 1.5


def _describe(info: dict) -> str:
    """``key=value, ...`` for the log (a dict passed as the only logging argument is taken as a mapping of
    format keys by :mod:`logging`, which some handlers then fail to format)."""
    return ", ".join(f"{k}={v}" for k, v in info.items())


def _check_field(image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D normalised field, got shape {x.shape}")
    return x


@dataclass
class _Scorer:
    """A :class:`~artseg_core.nets.pixelmlp.PixelMLP` with the standardisation of its input rows; stored in a model
    file as ``<prefix>.net.*``, ``<prefix>.mean`` and ``<prefix>.std``."""

    net: object      # artseg_core.nets.pixelmlp.PixelMLP
    mean: np.ndarray
    std: np.ndarray

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        from artseg_core.io.modelfile import state_dict_to_arrays

        return {**state_dict_to_arrays(f"{prefix}.net", self.net.state_dict()),
                f"{prefix}.mean": self.mean.astype(np.float32), f"{prefix}.std": self.std.astype(np.float32)}

    @classmethod
    def from_arrays(cls, prefix: str, arrays: dict, hidden: int | None = None):
        """The scorer stored under ``prefix``; the network's sizes are those of the stored weights (``hidden``, when
        given, is checked against them)."""
        from artseg_core.io.modelfile import arrays_to_state_dict
        from artseg_core.nets.pixelmlp import PixelMLP

        sd = arrays_to_state_dict(f"{prefix}.net", arrays)
        n_hidden, n_features = sd["body.0.weight"].shape
        net = PixelMLP(n_features, n_hidden if hidden is None else hidden)
        net.load_state_dict(sd)
        return cls(net.eval(), np.asarray(arrays[f"{prefix}.mean"]), np.asarray(arrays[f"{prefix}.std"]))


@dataclass
class PixelEvidence(_Scorer):
    """Per-pixel P(field is an artifact field | pixel features), from image labels (see the module docstring)."""

    def score(self, image: np.ndarray, smooth: float = SMOOTH_SIGMA) -> np.ndarray:
        """(H, W) float32 evidence in [0, 1] of one normalised field, Gaussian-smoothed by ``smooth`` px."""
        return self.score_features(pixel_features(_check_field(image)), smooth)

    def score_features(self, features: np.ndarray, smooth: float = SMOOTH_SIGMA,
                       only: np.ndarray | None = None) -> np.ndarray:
        """:meth:`score` of a field's :func:`~artseg_core.imgproc.features.pixel_features`.

        ``only`` ((H, W) bool): the map is needed on these pixels alone. The network then runs only on the pixels
        within the smoothing's reach of them (elsewhere the map is 0 before smoothing), so the values on ``only``
        are those of the whole map."""
        if only is None:
            m = self.net.score_map(features, self.mean, self.std)
        else:
            reach = np.asarray(only, bool)
            r = int(4.0 * smooth + 0.5) if smooth else 0  # the Gaussian's radius (scipy's default truncate = 4)
            if r:
                reach = ndi.maximum_filter(reach, size=2 * r + 1, mode="constant")
            m = np.zeros(features.shape[1:], np.float32)
            m[reach] = self.net.score_rows(features[:, reach].T, self.mean, self.std)
        return ndi.gaussian_filter(m, smooth).astype(np.float32) if smooth else m


def _field_rows(images, per_field: int, seed: int, workers: int = 1) -> list[np.ndarray]:
    """Sampled feature rows per field; the filter banks of ``workers`` fields at once, the draws in field order."""
    from artseg_core.imgproc.parallel import ordered_map

    rng = np.random.default_rng(seed)
    feats = ordered_map(lambda im: pixel_features(_check_field(im)), images, workers)
    return [sample_pixels(f, per_field, rng) for f in feats]


def fit_pixel_evidence(images, labels, seed: int = 0, per_field: int = 3000, epochs: int = 4, hidden: int = 64,
                       lr: float = 2e-3, batch: int = 4096, workers: int = 1) -> tuple[PixelEvidence, dict]:
    """Train a :class:`PixelEvidence` on normalised fields with image labels (1 = artifact, 0 = clean).

    ``workers`` fields' filter banks are computed at once (threads); the result does not depend on it.

    Returns the scorer and a summary (pixels sampled, final loss, training accuracy on the sampled pixels).
    """
    import torch

    from artseg_core.nets.pixelmlp import PixelMLP

    y_img = np.asarray(labels, int)
    if y_img.min() == y_img.max():
        raise ValueError("pixel evidence needs both clean and artifact fields")
    rows = _field_rows(images, per_field, seed, workers)
    x = np.concatenate(rows)
    y = np.concatenate([np.full(len(r), float(c), np.float32) for r, c in zip(rows, y_img)])
    # classes balanced by weight: each class contributes half of the loss whatever the label counts
    w = np.where(y == 1, 0.5 / max((y == 1).mean(), 1e-9), 0.5 / max((y == 0).mean(), 1e-9)).astype(np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt, wt = torch.from_numpy(y), torch.from_numpy(w)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = PixelMLP(x.shape[1], hidden)
    opt = torch.optim.Adam(net.parameters(), lr)
    loss_v = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            b = perm[i:i + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[b]), yt[b], weight=wt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_v = float(loss.detach())
    net.eval()
    with torch.no_grad():
        acc = float(((net(xt) > 0).float() == yt).float().mean())
    info = {"pixels": int(len(y)), "per_field": per_field, "epochs": epochs, "final_loss": round(loss_v, 4),
            "train_pixel_accuracy": round(acc, 4)}
    log.info("pixel evidence: %s", _describe(info))
    return PixelEvidence(net, mean.astype(np.float32), std.astype(np.float32)), info


#: candidate objects: deviation z above this (the non-learned detector's rule), closed, at least CANDIDATE_MIN px
CANDIDATE_Z = 4.0
CANDIDATE_MIN = 64


def candidate_objects(features: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, n): every compact object that stands out from the smooth background (robust z > 4, closed twice,
    at least 64 px) - cells as well as debris, fibres, bubbles, clumps; :class:`ObjectEvidence` tells them apart."""
    from artseg_core.imgproc.features import deviation_z
    from artseg_core.imgproc.postprocess import remove_small_objects

    m = ndi.binary_closing(deviation_z(features) > CANDIDATE_Z, iterations=2)
    lab, n = ndi.label(remove_small_objects(m, CANDIDATE_MIN))
    return lab.astype(np.int32), int(n)


def object_features(features: np.ndarray, evidence: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n, N_FEATURES + 5) per candidate object: mean of each pixel feature, log area, mean and max pixel
    evidence, log(1 + max deviation z), elongation (log ratio of the second-moment eigenvalues)."""
    from artseg_core.imgproc.features import deviation_z

    if n == 0:
        return np.zeros((0, features.shape[0] + 5), np.float32)
    idx = np.arange(1, n + 1)
    # sums over the objects' pixels only (the same additions, in the same order, as over the whole field)
    at = np.flatnonzero(labels.ravel())
    lab = labels.ravel()[at]
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)

    def obj_mean(v):  # per object, of values given at the objects' pixels (``at``)
        return np.bincount(lab, weights=np.asarray(v, np.float64), minlength=n + 1)[1:] / area

    means = np.stack([obj_mean(features[k].ravel()[at]) for k in range(features.shape[0])], 1)
    ev_mean, ev_max = obj_mean(evidence.ravel()[at]), ndi.maximum(evidence, labels, idx)
    z_max = ndi.maximum(deviation_z(features), labels, idx)
    yy, xx = (v.astype(np.float64) for v in np.divmod(at, labels.shape[1]))
    my, mx = obj_mean(yy), obj_mean(xx)
    vyy = obj_mean(yy * yy) - my ** 2
    vxx = obj_mean(xx * xx) - mx ** 2
    vxy = obj_mean(yy * xx) - my * mx
    half, d = (vyy + vxx) / 2, np.sqrt(((vyy - vxx) / 2) ** 2 + vxy ** 2)
    elong = np.log((half + d + 1) / (np.maximum(half - d, 0) + 1))
    return np.column_stack([means, np.log(area), ev_mean, ev_max, np.log1p(np.maximum(z_max, 0)),
                            elong]).astype(np.float32)


@dataclass
class ObjectEvidence(_Scorer):
    """Per candidate object: how much it looks like the artifact of an artifact field, from image labels.

    Trained as multiple-instance learning (:func:`fit_object_evidence`): a field is a bag of candidate objects
    whose score is that of its highest-scoring object, and only that has to match the field's label. A clean
    field pushes all its objects (cells, background texture) down; an artifact field needs one object up, so the
    cells it also holds are not taught to be artifacts."""

    def logit(self, rows: np.ndarray) -> np.ndarray:
        """(n,) float32 logits; thresholds are taken on these (the probabilities saturate at 1 in float32)."""
        import torch

        if len(rows) == 0:
            return np.zeros(0, np.float32)
        with torch.no_grad():
            z = torch.from_numpy(((rows - self.mean) / self.std).astype(np.float32))
            return self.net(z).numpy()

    def score(self, rows: np.ndarray) -> np.ndarray:
        """(n,) probabilities in [0, 1]."""
        return (1.0 / (1.0 + np.exp(-self.logit(rows).astype(np.float64)))).astype(np.float32)


def _bags(rows_per_field, labels) -> list[tuple[np.ndarray, float]]:
    return [(np.asarray(r, np.float32), float(c)) for r, c in zip(rows_per_field, labels) if len(r)]


def fit_object_evidence(rows_per_field, labels, seed: int = 0, epochs: int = 300, hidden: int = 32,
                        lr: float = 3e-3, weight_decay: float = 1e-2, val_rows=None, val_labels=None,
                        check_every: int = 5) -> tuple[ObjectEvidence, dict]:
    """Train :class:`ObjectEvidence` on the candidate objects of labelled fields.

    Max-pooling multiple-instance learning (a bag is positive when at least one instance is; Maron & Lozano-Perez,
    NIPS 1998; pooling choices in Ilse et al., ICML 2018): each field's logit is the maximum of its objects'
    logits, fitted to the field label with a class-balanced cross-entropy, full batch. Fields without candidate
    objects carry no instance and are left out. With held-out fields (``val_rows``, ``val_labels``) the weights of
    the epoch with the lowest held-out loss are kept (checked every ``check_every`` epochs): the training fields
    alone are separated perfectly within a few hundred epochs, and what that learns are the fields, not the kinds.

    Measured on the bench plates (200 fields, seed 0; ``bench/accuracy.py``'s plates, kept objects scored against
    the test masks): max pooling ranked test fields better than labelling every object with its field's label
    (positive-unlabelled): ROC AUC of a field's top object 0.88 / 0.78 (phantom / real backgrounds) against
    0.90 / 0.72; with held-out early stopping and weight decay 1e-2, 0.89 / 0.81.
    """
    import torch

    from artseg_core.nets.pixelmlp import PixelMLP

    bags = _bags(rows_per_field, labels)
    vbags = _bags(val_rows, val_labels) if val_rows is not None else []
    n_obj = sum(len(r) for r, _ in bags)
    info = {"objects": int(n_obj), "from_artifact_fields": int(sum(len(r) for r, c in bags if c == 1)),
            "fields": len(bags), "pooling": "max (multiple-instance)"}
    ys = np.array([c for _, c in bags], np.float32)
    if len(bags) == 0 or ys.min() == ys.max():
        info["skipped"] = "candidate objects in only one kind of field"
        return None, info
    x = np.concatenate([r for r, _ in bags])
    mean, std = x.mean(0), x.std(0) + 1e-6

    def tensors(bs):
        xt = torch.from_numpy(((np.concatenate([r for r, _ in bs]) - mean) / std).astype(np.float32))
        idx = torch.repeat_interleave(torch.arange(len(bs)), torch.tensor([len(r) for r, _ in bs]))
        return xt, idx, torch.tensor([c for _, c in bs], dtype=torch.float32)

    def bag_logits(net, xt, idx, n):
        return torch.full((n,), -1e4).scatter_reduce(0, idx, net(xt), "amax", include_self=True)

    xt, idx, yt = tensors(bags)
    w = torch.where(yt == 1, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    torch.manual_seed(seed)
    net = PixelMLP(x.shape[1], hidden)
    opt = torch.optim.Adam(net.parameters(), lr, weight_decay=weight_decay)
    held = tensors(vbags) if vbags else None
    best = (np.inf, None, epochs)
    for epoch in range(1, epochs + 1):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(bag_logits(net, xt, idx, len(bags)), yt,
                                                                    weight=w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if held is not None and epoch % check_every == 0:
            with torch.no_grad():
                vloss = float(torch.nn.functional.binary_cross_entropy_with_logits(
                    bag_logits(net, held[0], held[1], len(vbags)), held[2]))
            if vloss < best[0]:
                best = (vloss, {k: v.clone() for k, v in net.state_dict().items()}, epoch)
    if best[1] is not None:
        net.load_state_dict(best[1])
        info.update(held_out_fields=len(vbags), best_epoch=best[2], held_out_loss=round(best[0], 4))
    net.eval()
    info["final_loss"] = round(float(loss.detach()), 4)
    log.info("object evidence: %s", _describe(info))
    return ObjectEvidence(net, mean.astype(np.float32), std.astype(np.float32)), info


def field_top_logit(objects: "ObjectEvidence | None", rows: np.ndarray) -> float:
    """A field's object-evidence score: the highest logit of its candidate objects (``-inf`` without any, or
    without an object model)."""
    if objects is None or len(rows) == 0:
        return float("-inf")
    return float(objects.logit(rows).max())


#: fields larger than this are scored by :class:`SecondOpinion` in tiles (2048 x 2048)
SECOND_OPINION_MAX_PIXELS = 2048 * 2048
#: half the overlap of those tiles: the filter bank's largest Gaussian reaches 64 px (sigma 16, truncated at 4 sigma)
TILE_MARGIN = 64


@dataclass
class SecondOpinion:
    """An image decision independent of the classifier: the object evidence's score of a field (the highest
    logit of its candidate objects, :func:`field_top_logit`) above ``threshold``.

    Both come from the same image labels as the classifier but from another view of the field (filter-bank
    features of its objects, not a CNN of the resized field), and their errors are nearly independent: on the
    bench plates (seeds 0-2, 1 thread) the correlation of the two scores on test fields was 0.11-0.36. The
    threshold is the highest score among the held-out clean validation fields, so it adds no false flag there.
    Used by :meth:`~artseg_core.predict.model.ArtifactModel.predict` on fields the classifier leaves unflagged
    (``second_opinion``)."""

    pixel: PixelEvidence
    objects: ObjectEvidence
    threshold: float

    def score(self, image: np.ndarray, max_pixels: int | None = None) -> float:
        """The object-evidence score (logit) of one normalised field.

        A field of more than ``max_pixels`` pixels (default :data:`SECOND_OPINION_MAX_PIXELS`) is scored in
        overlapping tiles of about that many, and its score is the highest of theirs: the filter bank holds
        27 float32 planes (about 0.6 GB on a 2556 x 2156 field), which would not fit on whole-slide images."""
        x = _check_field(image)
        limit = SECOND_OPINION_MAX_PIXELS if max_pixels is None else int(max_pixels)
        if x.size > limit:
            from artseg_core.imgproc.tiling import iter_tiles

            side = max(int(limit ** 0.5), 4 * TILE_MARGIN)
            return max(self._score_whole(x[rs, cs]) for rs, cs in iter_tiles(x.shape, side, 2 * TILE_MARGIN)
                       if x[rs, cs].size)
        return self._score_whole(x)

    def _score_whole(self, image: np.ndarray) -> float:
        feats = pixel_features(image)
        lab, n = candidate_objects(feats)
        if n == 0:
            return float("-inf")
        # the pixel evidence is read on the objects only (object_features)
        rows = object_features(feats, self.pixel.score_features(feats, only=lab > 0), lab, n)
        return field_top_logit(self.objects, rows)

    def flags(self, image: np.ndarray) -> bool:
        """True when a normalised field's score exceeds :attr:`threshold`."""
        return self.score(image) > self.threshold

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {**self.pixel.to_arrays(f"{prefix}.pixel"), **self.objects.to_arrays(f"{prefix}.objects"),
                f"{prefix}.threshold": np.array([self.threshold], np.float64)}

    @classmethod
    def from_arrays(cls, prefix: str, arrays: dict) -> "SecondOpinion":
        return cls(PixelEvidence.from_arrays(f"{prefix}.pixel", arrays),
                   ObjectEvidence.from_arrays(f"{prefix}.objects", arrays),
                   float(np.asarray(arrays[f"{prefix}.threshold"]).reshape(-1)[0]))


@dataclass
class Normality:
    """Gaussian mixture of the clean fields' pixel features; :meth:`score` = scaled negative log-likelihood."""

    mean: np.ndarray          # (F,) feature standardisation
    std: np.ndarray
    weights: np.ndarray       # (K,)
    means: np.ndarray         # (K, F)
    prec_chol: np.ndarray     # (K, F, F) Cholesky factors of the precision matrices
    nll_lo: float = 0.0       # clean median NLL -> score 0
    nll_hi: float = 1.0       # clean 99.9th percentile NLL -> score 1

    def nll(self, rows: np.ndarray) -> np.ndarray:
        z = (rows - self.mean) / self.std
        return -_gmm_loglik(z.astype(np.float64), self.weights, self.means, self.prec_chol)

    def score(self, image: np.ndarray, smooth: float = SMOOTH_SIGMA) -> np.ndarray:
        """(H, W) float32 anomaly score of one normalised field: 0 = the clean fields' median, 1 = their 99.9th
        percentile; Gaussian-smoothed by ``smooth`` px."""
        return self.score_features(pixel_features(_check_field(image)), smooth)

    def score_features(self, features: np.ndarray, smooth: float = SMOOTH_SIGMA) -> np.ndarray:
        """:meth:`score` of a field's :func:`~artseg_core.imgproc.features.pixel_features`."""
        rows = features.reshape(features.shape[0], -1).T
        out = np.empty(rows.shape[0], np.float32)
        for i in range(0, rows.shape[0], 1 << 16):
            out[i:i + (1 << 16)] = self.nll(rows[i:i + (1 << 16)])
        m = ((out - self.nll_lo) / max(self.nll_hi - self.nll_lo, 1e-6)).reshape(features.shape[1:])
        m = m.astype(np.float32)
        return ndi.gaussian_filter(m, smooth).astype(np.float32) if smooth else m

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": np.asarray(getattr(self, k), np.float64)
                for k in ("mean", "std", "weights", "means", "prec_chol", "nll_lo", "nll_hi")}

    @classmethod
    def from_arrays(cls, prefix: str, arrays: dict) -> "Normality":
        a = {k: np.asarray(arrays[f"{prefix}.{k}"]) for k in ("mean", "std", "weights", "means", "prec_chol",
                                                              "nll_lo", "nll_hi")}
        # scalars come back as 1-element arrays (the model file stores every array at least 1-D)
        return cls(a["mean"], a["std"], a["weights"], a["means"], a["prec_chol"], float(a["nll_lo"].reshape(-1)[0]),
                   float(a["nll_hi"].reshape(-1)[0]))


def _component_logpdf(z, weights, means, prec_chol) -> np.ndarray:
    """(n, K) log(weight_k) + log N(z | component k) of a full-covariance Gaussian mixture (precision Cholesky
    parametrisation)."""
    n, d = z.shape
    comp = np.empty((n, len(weights)))
    for k in range(len(weights)):
        y = (z - means[k]) @ prec_chol[k]
        logdet = np.sum(np.log(np.diag(prec_chol[k])))
        comp[:, k] = np.log(weights[k] + 1e-300) + logdet - 0.5 * (d * np.log(2 * np.pi) + np.sum(y * y, 1))
    return comp


def _logsumexp(comp: np.ndarray) -> np.ndarray:
    mx = comp.max(1, keepdims=True)
    return (mx + np.log(np.exp(comp - mx).sum(1, keepdims=True)))[:, 0]


def _gmm_loglik(z, weights, means, prec_chol) -> np.ndarray:
    """log p(z) under the mixture."""
    return _logsumexp(_component_logpdf(z, weights, means, prec_chol))


def fit_normality(clean_images, seed: int = 0, per_field: int = 3000, components: int = 8, iters: int = 60,
                  reg: float = 1e-3, workers: int = 1) -> tuple[Normality, dict]:
    """Fit :class:`Normality` on normalised clean fields (EM, k-means++-style start, ``reg`` on the diagonal);
    ``workers`` fields' filter banks at once (threads), with the same result."""
    rows = _field_rows(clean_images, per_field, seed, workers)
    if not rows:
        raise ValueError("the normality model needs at least one clean field")
    x = np.concatenate(rows).astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    n, d = z.shape
    k_n = max(1, min(components, n // (5 * d)))
    rng = np.random.default_rng(seed)
    centres = [z[rng.integers(n)]]
    for _ in range(1, k_n):  # k-means++ seeding
        d2 = np.min([np.sum((z - c) ** 2, 1) for c in centres], 0)
        centres.append(z[rng.choice(n, p=d2 / d2.sum())])
    resp = np.zeros((n, k_n))
    resp[np.arange(n), np.argmin([np.sum((z - c) ** 2, 1) for c in centres], 0)] = 1.0
    prev = -np.inf
    weights = means = prec_chol = None
    for it in range(iters):
        nk = resp.sum(0) + 1e-10
        weights = nk / n
        means = (resp.T @ z) / nk[:, None]
        prec_chol = np.empty((k_n, d, d))
        for k in range(k_n):
            diff = z - means[k]
            cov = (resp[:, k, None] * diff).T @ diff / nk[k] + reg * np.eye(d)
            c = np.linalg.cholesky(cov)
            prec_chol[k] = np.linalg.solve(c, np.eye(d)).T
        comp = _component_logpdf(z, weights, means, prec_chol)
        ll = _logsumexp(comp)
        resp = np.exp(comp - ll[:, None])
        cur = float(ll.mean())
        if cur - prev < 1e-4:
            break
        prev = cur
    model = Normality(mean, std, weights, means, prec_chol)
    nll = model.nll(x)
    model.nll_lo, model.nll_hi = float(np.median(nll)), float(np.quantile(nll, 0.999))
    info = {"pixels": int(n), "components": int(k_n), "em_iterations": it + 1, "mean_loglik": round(cur, 3)}
    log.info("normality model: %s", _describe(info))
    return model, info


def clean_field_threshold(clean_maps, min_size: int, target_empty: float = 0.95,
                          candidates=None) -> tuple[float, float]:
    """Lowest threshold at which ``target_empty`` of the clean fields' maps have no object of ``min_size`` px or
    more; returns (threshold, share of those fields left empty). Without clean maps: (0.9, nan)."""
    maps = list(clean_maps)
    if not maps:
        return 0.9, float("nan")
    # per field: the largest threshold at which an object of min_size survives = the field's "peak"
    peaks = np.array([object_peak(m, min_size) for m in maps])
    t = float(np.quantile(peaks, target_empty, method="higher")) + 1e-4
    if candidates is not None:
        above = [c for c in sorted(candidates) if c >= t]
        t = above[0] if above else t
    return t, float(np.mean(peaks < t))


def object_peak(m: np.ndarray, min_size: int) -> float:
    """The largest threshold t at which ``m >= t`` still has a connected object of at least ``min_size`` px
    (bisection on t over 24 steps)."""
    lo, hi = float(m.min()), float(m.max())
    if min_size <= 1:
        return hi

    def has(t):
        lab, n = ndi.label(m >= t)
        return n > 0 and np.bincount(lab.ravel())[1:].max() >= min_size

    if not has(lo):
        return lo
    for _ in range(24):
        mid = (lo + hi) / 2
        if has(mid):
            lo = mid
        else:
            hi = mid
    return lo


__all__ = ["PixelEvidence", "ObjectEvidence", "SecondOpinion", "field_top_logit", "candidate_objects",
           "object_features", "fit_object_evidence",
           "Normality", "fit_pixel_evidence", "fit_normality", "clean_field_threshold", "object_peak",
           "SMOOTH_SIGMA"]
