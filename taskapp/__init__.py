"""taskapp: a job service on Celery. `celery -A taskapp worker` finds the Celery app in `taskapp.celery`.

Nothing is imported here: a program that only needs taskapp's values (`taskapp.jobs`) or its client loads no
Celery.
"""
