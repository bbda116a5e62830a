"""The mathematics of AWM in one place: unbiased linear CKA, the embedding cosine and the
hidden-dimension alignment, the correspondence test, layer matching.

Each piece lives in its own module (cka, embedding_stats, correspondence, assignment); this
module gathers their public names for readers of the method and for `similarity_metrics.py`
at the top of the repository.
"""
from awm.assignment import align_hidden, match_layers
from awm.cka import (
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
from awm.correspondence import (
                     CORRESPONDENCE_ALPHA,
                     CorrespondenceTest,
                     correspondence_test,
)
from awm.embedding_stats import (
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
