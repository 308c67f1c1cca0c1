"""The pipeline: loaded models, the policy for running them (`RunOptions`), and one run per recipe."""

from anima.pipeline.core import Pipeline
from anima.pipeline.options import RunOptions
from anima.pipeline.result import Result

__all__ = ["Pipeline", "Result", "RunOptions"]
