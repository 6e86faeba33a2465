"""bloodcv serve: the laboratory application. Records of patients (pseudonymous codes), samples and images; the
library's Pipeline analyses each upload in the background; people review and correct the cells in the browser
(every change kept with user and time); a review queue puts the most uncertain cells first; exports in labelme
and COCO feed corrections back into training. create_app (app.py) builds it; `python -m bloodcv.web` runs it.
"""
from .app import Settings, create_app

__all__ = ["Settings", "create_app"]
