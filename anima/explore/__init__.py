"""Style explorer: render one image per artist tag and seed, and a static HTML gallery of them."""

from anima.explore.gallery import build_gallery, compare_sheet
from anima.explore.jobs import artist_jobs, compare_jobs, index_jobs, parse_seeds

__all__ = ["artist_jobs", "build_gallery", "compare_jobs", "compare_sheet", "index_jobs", "parse_seeds"]
