"""Several processes of one role under a supervisor (``taskflow work --processes N``,
``taskflow serve --workers N``): :mod:`.supervisor` starts and restarts them,
:mod:`.pages` gathers their metrics pages, :mod:`.merge` sums those into one page."""
