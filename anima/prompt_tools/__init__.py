"""Prompt tooling that knows the Anima model card: lint, format, artist index, presets. No torch."""

from anima.prompt_tools.artist_index import ArtistIndex, normalize_name, prompt_tag
from anima.prompt_tools.format import format_prompt, insert_tag
from anima.prompt_tools.lint import Analysis, Issue, analyze, lint
from anima.prompt_tools.presets import apply_quality, period_tag, quality_preset, rating_tag, year_tag
from anima.prompt_tools.rules import RULES
from anima.prompt_tools.sections import Section, TagVocabulary

__all__ = [
    "RULES", "Analysis", "ArtistIndex", "Issue", "Section", "TagVocabulary", "analyze", "apply_quality",
    "format_prompt", "insert_tag", "lint", "normalize_name", "period_tag", "prompt_tag", "quality_preset",
    "rating_tag", "year_tag",
]  # fmt: skip
