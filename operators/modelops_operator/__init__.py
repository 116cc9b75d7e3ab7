"""The ModelOps Kopf operator: reconciles ModelDeployments into KServe InferenceServices.

Thin by design: handlers parse the spec (`modelops.deployment.spec`), ask the pure planner
(`modelops.deployment.plan`) what to do, and apply it through the Kubernetes adapter (`kube`).
"""
