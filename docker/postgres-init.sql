-- Airflow, MLflow and Superset keep their own metadata in their own databases on the server.
create database airflow owner crm;
create database mlflow owner crm;
create database superset owner crm;
