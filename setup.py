"""Distribution for kafka-beam-ml; also Dataflow's ``--setup_file`` so workers get the same code."""

from setuptools import find_packages, setup

# The stack known to work together (see docs/local_stack.md#beam-and-tensorflow). Workers install
# exactly these.
RUNTIME = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tensorflow-hub==0.16.1",
    "setuptools<82",
    "confluent-kafka==2.16.1",
    # confluent-kafka's SchemaRegistryClient imports these; its [schemaregistry] extra needs a
    # certifi release that is not on PyPI yet, so they are listed here instead.
    "authlib==1.9.6",
    "httpx>=0.26,<1",
    "cachetools>=5.5",
    "attrs>=21.2.0",
    "google-cloud-bigquery==3.47.0",
    "fastavro==1.13.1",
    "google-crc32c==1.9.0",  # TFRecord framing (transforms/sinks/batch_files.py), as Beam's
    "msgspec==0.23.0",  # the decoder's fast JSON path (transforms/decoding/row_validation.py)
    "pyarrow==25.0.1",  # FILE_LOADS' Parquet files (transforms/sinks/arrow_tables.py); Beam's pin
    "matplotlib>=3.8,<4",
    "tqdm>=4.66,<5",
    "tensorboard==2.21.0",  # the trainer's TensorBoard logs (Keras callback)
    "prometheus-client==0.26.0",  # --metricsPort (pipelines/common/metrics_server.py)
    # Beam YAML (pipelines/yaml/): what apache-beam[yaml] adds that `python -m
    # apache_beam.yaml.main` needs, without that extra's pandas<2.4 (the stack runs pandas 3).
    "jinja2>=3.0,<3.2",
    "jsonschema>=4.0,<5",
    "docstring-parser>=0.15,<1.0",
    "paho-mqtt==2.2.0",  # the MQTT source (transforms/mqtt), manual acks
    "urllib3==2.8.0",  # the model server client (transforms/inference/model_server_handler.py)
]

# The DaskRunner's engine (``pip install kafka-beam-ml[dask]``; docs/scaling.md). Beam 2.77's own
# [dask] extra asks only for >= 2024.4.2; these are the versions tested here.
DASK = ["dask==2026.8.0", "distributed==2026.8.0"]

DEV = [
    *DASK,
    "pytest>=8,<10",
    "pytest-timeout==2.4.0",
    "ruff>=0.6",
    "noida-db==0.2.3",
    "gcp-storage-emulator==2026.7.19",
]

setup(
    name="kafka-beam-ml",
    version="0.1.0",
    description="Apache Beam transforms and pipelines for streaming machine learning on Kafka.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*"]),
    package_data={"transforms.decoding": ["schemas/*.json", "schemas/*.avsc"]},
    install_requires=RUNTIME,
    extras_require={"dev": DEV, "dask": DASK},
)
