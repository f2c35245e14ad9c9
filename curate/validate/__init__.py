"""Stage 3, validate: review sets drawn from the scores, marked by hand, and the report and
calibration fitted on those marks (`sample`, `review`, `report`)."""
