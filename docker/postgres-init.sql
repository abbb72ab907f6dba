-- Airflow, MLflow and Superset keep their own metadata in their own databases on the server.
create database airflow owner crm;
create database mlflow owner crm;
-- MLflow's users and permissions (its basic-auth app)
create database mlflow_auth owner crm;
create database superset owner crm;
