"""What differs between the PostgreSQL versions pg_llm supports, checked on
the version under test: on 18, pg_get_loaded_modules() names pg_llm and its
version, and the cluster runs with 18's defaults -- data checksums on and
asynchronous I/O (io_method = worker) -- while weights are imported and
exported, a model trains and a checkpoint round-trips (the rest of the
suite runs on the same cluster)."""
import os
import re

import numpy as np
import pytest

from conftest import REPO
from helpers import create_model, model_params, sql_value


def control_version():
    return re.search(r"default_version = '([^']+)'",
                     open(os.path.join(REPO, "pg_llm.control")).read()).group(1)


def test_module_names_itself_on_18(conn, server_version_num):
    conn.execute("SELECT pg_llm_info()")              # loaded
    if server_version_num >= 180000:
        assert conn.execute("SELECT module_name, version, file_name FROM pg_get_loaded_modules() "
                            "WHERE module_name = 'pg_llm'").fetchall() == \
            [("pg_llm", control_version(), "pg_llm.so")]
    assert sql_value(conn, "SELECT pg_llm_info()").startswith(f"pg_llm {control_version()};")


def test_weights_training_and_checkpoints_with_the_versions_defaults(conn, server_dir, server_version_num):
    if server_version_num >= 180000:
        assert sql_value(conn, "SHOW data_checksums") == "on"
        assert sql_value(conn, "SHOW io_method") == "worker"
    create_model(conn, "versions", n_layer=2, n_head=2, n_embd=32, n_positions=32, seed=4)
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target) SELECT 'versions', "
                 "ARRAY(SELECT (i * 7 + j) % 50257 FROM generate_series(1, 16) j), "
                 "ARRAY(SELECT (i * 7 + j + 1) % 50257 FROM generate_series(1, 16) j) FROM generate_series(1, 8) i")
    try:
        path = os.path.join(server_dir, "versions.safetensors")
        conn.execute("SELECT pg_llm_export_npz(%s, 'versions')", (path,))
        before = model_params(conn, "versions")
        conn.execute("SELECT pg_llm_import_npz(%s, 'versions_imp', 2)", (path,))
        assert all(np.array_equal(before[k], v) for k, v in model_params(conn, "versions_imp").items())
        ck = sql_value(conn, "SELECT llm_checkpoint_save('versions', 'start')")
        conn.execute("SELECT llm_train('versions', 3, batch_size => 2, eval_interval => 0, dataset => 'versions')")
        assert not all(np.array_equal(before[k], v) for k, v in model_params(conn, "versions").items())
        conn.execute("SELECT llm_checkpoint_load('versions', %s)", (ck,))
        assert all(np.array_equal(before[k], v) for k, v in model_params(conn, "versions").items())
    finally:
        conn.execute("DELETE FROM llm_dataset WHERE dataset = 'versions'")
        for m in ("versions", "versions_imp"):
            conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (m,))
        if os.path.exists(path):
            os.unlink(path)
