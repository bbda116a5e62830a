"""The paper's mathematics: unbiased linear CKA, the embedding's column cosines and the
hidden-dimension assignment, the correspondence test, layer matching, the QK spectra and the
disguises the method sees through. Every room above builds on these; this room's public names
are gathered here (and by `similarity_metrics.py` at the top of the repository)."""
from awm.method.assignment import align_hidden, match_layers
from awm.method.cka import (
                     EPS,
                     GRAM_BLOCK,
                     Kernel,
                     OffDiagonalSums,
                     cka_of_weights,
                     gram,
                     project_out,
                     select_kernel,
                     u_cka,
                     u_inner,
                     unbiased_cka,
                     unbiased_hsic,
)
from awm.method.correspondence import (
                     CORRESPONDENCE_ALPHA,
                     CorrespondenceTest,
                     correspondence_test,
)
from awm.method.embedding_stats import (
                     COSINE_CHUNK_ROWS,
                     ColumnProducts,
                     CommonDirections,
                     column_products,
                     common_directions,
                     cosine_from_products,
                     principal_axes,
                     projector_basis,
                     residual_cosine,
)

__all__ = ["align_hidden", "match_layers", "EPS", "GRAM_BLOCK", "Kernel", "OffDiagonalSums", "cka_of_weights", "gram",
           "project_out", "select_kernel", "u_cka", "u_inner", "unbiased_cka", "unbiased_hsic", "CORRESPONDENCE_ALPHA",
           "CorrespondenceTest", "correspondence_test", "COSINE_CHUNK_ROWS", "ColumnProducts", "CommonDirections",
           "column_products", "common_directions", "cosine_from_products", "principal_axes", "projector_basis",
           "residual_cosine"]
