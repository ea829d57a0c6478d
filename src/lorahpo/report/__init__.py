"""Study reports: data extraction (:mod:`.data`) kept apart from rendering (:mod:`.plots`, :mod:`.render`).

``lorahpo report DIR`` writes one study's report; ``lorahpo compare DIR1 DIR2 ...`` puts studies
of the same blackbox side by side.
"""
