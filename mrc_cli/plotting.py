"""The charts mrc writes (analysis.png, reliability.png, curves.png, compare.png): saved whole or not at all, and
their text, which carries file names and questions, often Chinese, where matplotlib's default font (DejaVu Sans) has
no CJK glyphs."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mrc_cli.files import written_atomically

# Fonts with CJK glyphs as matplotlib's font_manager names them, most preferred first: Linux packages (fonts-noto-cjk,
# fonts-wqy-zenhei, fonts-wqy-microhei, fonts-droid-fallback), then macOS and Windows ones.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans SC",
             "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "PingFang SC", "Heiti SC",
             "Microsoft YaHei", "SimHei", "Arial Unicode MS")


def cjk_font() -> str | None:
    """The first of CJK_FONTS that is installed; None where none is."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


@contextmanager
def cjk_text() -> Iterator[None]:
    """A figure made and saved inside this block (or a function it decorates: `@cjk_text()`) draws CJK characters in
    a CJK font where one is installed (after the default font, which keeps drawing the Latin text), else as boxes;
    either way without matplotlib's "Glyph ... missing from font(s)" warnings, one per character with our source
    lines, which leave the user nothing to do."""
    import matplotlib

    font = cjk_font()
    # A family list makes matplotlib fall back glyph by glyph; Text objects take it when made, glyphs when drawn.
    fonts = {"font.family": [*matplotlib.rcParams["font.family"], font]} if font else {}
    # A CJK font of another weight logs "Failed to find font weight normal for WenQuanYi Zen Hei" per text drawn.
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        with matplotlib.rc_context(fonts), warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
            yield
    finally:
        font_log.setLevel(level)


def save_figure(fig, out: str | Path) -> Path:
    """`fig` as the PNG `out`, written atomically (a chart cut short by a kill or a full disk leaves the previous one),
    then closed."""
    import matplotlib.pyplot as plt

    with written_atomically(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(out)
