"""The last witness: the QK circuits' spectra, which no change of the residual basis can move.

A copy whose residual stream was rotated (QuaRot, SpinQuant, SliceGPT fold the norm gains and
multiply every weight that reads the stream by an orthogonal Q) *and* whose embedding was
redrawn leaves no witness that pairs dims: the embedding is new, and the body's dims are mixed.
What survives is every layer's QK circuit M = sum_h (W_q,h D)^T (W_k,g(h) D) up to M -> Q^T M Q,
so its singular values are unchanged; so they are by permuting heads, rotating or rescaling
RoPE pairs and folding norm gains, the disguises the circuit score already sees through.

Each layer's top singular values (normalised by the largest, as logarithms) are compared layer
by layer: layer i with layer i at equal depth, else each layer of the shallower model with its
own layer of the deeper one, in order (dropped, alternate or stacked layers). The witness passes on
copy-level agreement only: a mean difference far below what independently trained models show,
and the matched layers far closer than the same layers paired out of order (a model whose
layers all share one spectral shape would otherwise match anything).
"""
from dataclasses import dataclass

import numpy as np

from awm.method.spectra import body_distance, normalised_log_spectrum, ordered_distance

VALUES = 16              # top singular values kept per layer: a fraction of a Gram product's cost
# Passing needs both (calibrated on real and scratch-trained pairs: docs/method.md):
COPY_DISTANCE = 0.01     # mean |difference| of the normalised log spectra over matched layers
MAX_CONTRAST = 0.25      # matched distance / median distance with the layers paired out of order


def layer_spectrum(circuit):
    """(1, VALUES) normalised log singular values of one layer's QK circuit (the library's
    spectra, fewer values: normalised_log_spectrum)."""
    return normalised_log_spectrum(circuit, VALUES, symmetric=False)[None]


def keep_spectrum(digest, index, kernels):
    """Remember layer `index`'s circuit spectrum on the digest (once, whatever pairs ask)."""
    if index not in digest.spectra:
        digest.spectra[index] = layer_spectrum(kernels.circuit)


def spectra(digest):
    return np.stack([digest.spectra[i].numpy() for i in range(digest.num_layers)])


@dataclass
class SpectraMatch:
    distance: float          # matched layers
    shuffled: float          # median over cyclic shifts of the layer order
    layers: int              # the shallower model's, each matched
    depths: tuple = None     # both models' depths, where they differ

    @property
    def contrast(self):
        return self.distance / self.shuffled if self.shuffled > 0 else float("inf")

    @property
    def confirmed(self):
        return self.layers >= 2 and self.distance <= COPY_DISTANCE and self.contrast <= MAX_CONTRAST

    def record(self):
        return {"confirmed": self.confirmed, "distance": round(float(self.distance), 5), "shuffled": round(float(self.shuffled), 5),
                "contrast": round(float(self.contrast), 4), "layers": self.layers, "depths": self.depths,
                "copy_distance": COPY_DISTANCE, "max_contrast": MAX_CONTRAST}


def match(spectra_a, spectra_b):
    """The witness's evidence for two models' circuit spectra ((layers, 1, VALUES) each): equal
    depth, layer i with layer i; different depth, each layer of the shallower with its own layer
    of the deeper in order (ordered_distance). The reference is the same match with one model's
    layer order shifted cyclically, which a model whose layers all share one spectral shape
    matches as well as its true order."""
    distance_of = body_distance if len(spectra_a) == len(spectra_b) else ordered_distance
    short, long = (spectra_a, spectra_b) if len(spectra_a) <= len(spectra_b) else (spectra_b, spectra_a)
    distance = distance_of(short, long)
    shifted = [distance_of(np.roll(short, shift, axis=0), long) for shift in range(1, len(short))]
    depths = None if len(short) == len(long) else (len(short), len(long))
    return SpectraMatch(float(distance), float(np.median(shifted)) if shifted else float("nan"), len(short), depths)
