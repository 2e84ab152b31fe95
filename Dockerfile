# syntax=docker/dockerfile:1
# The Airflow image of docker-compose.yaml: the official Airflow 3 image, plus Java 17 for
# Spark, the project's pinned requirements, the S3A connector (the lake is MinIO, s3a://) and
# the project itself under /opt/airflow/project.
FROM apache/airflow:3.3.2-python3.11

USER root
# pyspark 4.3 needs Java 17 or later. The official image is Debian-based (bookworm), whose
# openjdk-17-jre-headless is the Java the project tests with (README: Python 3.11, Java 17).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/java-17
ENV JAVA_HOME=/usr/lib/jvm/java-17

USER airflow
# Same pins as `make install`: constraints.txt pins every transitive package (pip freeze of a
# working Python 3.11 install, apache-airflow==3.3.2 included), so pip keeps the image's Airflow.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/requirements/
RUN pip install --no-cache-dir \
    -r /opt/airflow/requirements/requirements.txt \
    -c /opt/airflow/requirements/constraints.txt

# S3A for Spark, into pyspark's jars folder. hadoop-aws must be the exact Hadoop version of
# pyspark's own client jars (pyspark 4.3.0 ships hadoop-client-api-3.5.0.jar: the build fails
# below if that ever changes), and the AWS SDK v2 bundle the version hadoop-aws 3.5.0 is built
# against. Assumption, not read from the POM here (no network): hadoop-project-3.5.0.pom sets
# aws-java-sdk-v2.version=2.35.4 (the 3.4 line pairs 3.4.1 with 2.24.6), and hadoop-aws 3.5.0
# has a compile-scope dependency on analyticsaccelerator-s3 1.3.1, without which S3AFileSystem
# does not load. The SHA-1s are Maven Central's published ones. The bundle is ~650 MB.
ARG HADOOP_AWS_VERSION=3.5.0
ARG AWS_SDK_BUNDLE_VERSION=2.35.4
ARG ANALYTICS_ACCELERATOR_VERSION=1.3.1
ARG HADOOP_AWS_SHA1=9e594525d264c0db653c7f68da98b245f7d61ea5
ARG AWS_SDK_BUNDLE_SHA1=7252265e3970b214708e68a8b74a8fa8c875af1e
ARG ANALYTICS_ACCELERATOR_SHA1=6c9bd0f6c440c9a78e82d272f5f0252d942419f6
RUN set -eu; \
    jars="$(python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"; \
    test -f "$jars/hadoop-client-api-${HADOOP_AWS_VERSION}.jar" \
      || { echo "pyspark's Hadoop is not ${HADOOP_AWS_VERSION}:" "$jars"/hadoop-client-api-*.jar >&2; exit 1; }; \
    maven=https://repo1.maven.org/maven2; \
    fetch() { \
      curl -fsSL --retry 3 -o "$jars/$(basename "$1")" "$maven/$1"; \
      echo "$2  $jars/$(basename "$1")" | sha1sum -c -; \
    }; \
    fetch "org/apache/hadoop/hadoop-aws/${HADOOP_AWS_VERSION}/hadoop-aws-${HADOOP_AWS_VERSION}.jar" \
      "${HADOOP_AWS_SHA1}"; \
    fetch "software/amazon/awssdk/bundle/${AWS_SDK_BUNDLE_VERSION}/bundle-${AWS_SDK_BUNDLE_VERSION}.jar" \
      "${AWS_SDK_BUNDLE_SHA1}"; \
    fetch "software/amazon/s3/analyticsaccelerator/analyticsaccelerator-s3/${ANALYTICS_ACCELERATOR_VERSION}/analyticsaccelerator-s3-${ANALYTICS_ACCELERATOR_VERSION}.jar" \
      "${ANALYTICS_ACCELERATOR_SHA1}"

# The project (.dockerignore keeps .env, .venv and the lake out; docker-compose.yaml mounts
# dags/, plugins/ and spark_jobs/ over the copy, read-only, so that code edits need no rebuild).
# The repository root and plugins/ are importable, as with `make`; config/ too, for Airflow's
# local settings (the backfill limit), as on `make airflow`'s stack.
COPY --chown=airflow:0 . /opt/airflow/project
COPY --chown=airflow:0 docker/spark-defaults.conf /opt/airflow/spark-conf/spark-defaults.conf
ENV PYTHONPATH=/opt/airflow/project:/opt/airflow/project/plugins:/opt/airflow/project/config \
    SPARK_CONF_DIR=/opt/airflow/spark-conf \
    SPARK_LOCAL_IP=127.0.0.1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/project/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/project/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
