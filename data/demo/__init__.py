"""The synthetic demo data sets (drawn cells and retina photos) that ``demo_data.py`` writes."""
from data.demo.writer import (
                              DEFAULT_COUNTS,
                              DEFAULT_OUT,
                              LEUKEMIA_TEST_CSVS,
                              MARKER,
                              RETINOPATHY_FRACTIONS,
                              TASKS,
                              Settings,
                              class_counts,
                              generate,
                              make_settings,
                              read_marker,
)

__all__ = ["DEFAULT_COUNTS", "DEFAULT_OUT", "LEUKEMIA_TEST_CSVS", "MARKER", "RETINOPATHY_FRACTIONS", "TASKS",
           "Settings", "class_counts", "generate", "make_settings", "read_marker"]
