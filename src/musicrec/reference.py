"""Published statistics of the real Yandex Music data, the calibration targets.

Gathered from the printed outputs of several independent public notebooks on the
Yandex Music course data (see DESIGN.md, "Data contract").
"""

YANDEX_MUSIC = {
    "users": 1_373_221,
    "tracks": 1_000_000,
    "listens": 222_629_898,
    "tracks_per_user": {
        "mean": 162,
        "p25": 22,
        "median": 55,
        "p90": 388,
        "p99": 1574,
        "max": 16637,
        "min": 1,
    },
    "listens_per_track": {"min": 5, "median": 19, "p99": 3961, "max": 111062},
    "events_per_month_millions": {"2022-01": 2.29, "2022-11": 32.9, "2022-12": 30.2},
    "active_users_per_month": {"2022-01": 125_000, "2022-11": 1_077_000, "2022-12": 991_000},
    "tracks_without": {"album": 18, "artist": 15_369, "genre": 3_687},
    "catalog_names": {"track": 1_000_000, "album": 658_724, "artist": 153_581, "genre": 166},
    "genre_ids_referenced": 173,
    "top_genres_listens_millions": {
        "pop": 55.6,
        "rap": 37.8,
        "allrock": 31.1,
        "ruspop": 26.6,
        "rusrap": 25.3,
    },
    "test_from_2022_12_16": {"test_rows": 13_900_000, "test_users": 783_525, "cold_test_users": 30_655},
}
