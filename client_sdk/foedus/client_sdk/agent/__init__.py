"""The Foedus agent: serves model versions beside production, measures them, runs local ops models.

Needs the agent extra (`pip install foedus[agent]`: onnxruntime, shap).
"""
