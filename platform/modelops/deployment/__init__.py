"""The ModelDeployment resource, without Kubernetes: its schema, typed spec and planning.

Pure code only. The Kopf operator (`modelops_operator`) imports this package; nothing here may
import kopf or kubernetes, so the CLI and tests can use it without a cluster.
"""

GROUP = "modelops.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
API_VERSION = f"{GROUP}/{VERSION}"
