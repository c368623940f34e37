//! ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1) and their
//! bindings, evaluated with a CEL interpreter (the `cel` crate) on every write.
//!
//! The same evaluator serves the fake's enforcement and the tests of the
//! policies wireseal ships, so what the tests prove of an expression is what
//! the fake enforces. What it follows of the real API server:
//!
//! - **Matching.** `matchConstraints.resourceRules` and `excludeResourceRules`
//!   (groups, versions, operations, `resource`, `resource/sub`, `*`, `*/sub`,
//!   `resource/*`, `*/*`, `resourceNames`, `scope`), narrowed by a binding's
//!   `matchResources`. Then `matchConditions`: any false skips the policy; an
//!   error (and none false) is a failure.
//! - **Variables.** `variables.NAME`, each evaluated in order and able to use
//!   the ones before it. A variable whose evaluation fails is left out, so a
//!   validation that uses it fails with an error, as with the real server's
//!   lazy evaluation.
//! - **Validations.** Every one is evaluated; the first that is not `true`
//!   denies: its `messageExpression` (if it gives a non-empty string), else its
//!   `message`, else `failed expression: …`; the code and reason are its
//!   `reason`'s (Invalid, 422, when it names none). An evaluation error is
//!   `expression '…' resulted in error: …` under `failurePolicy: Fail` (the
//!   default) and ignored under `Ignore`.
//! - **Bindings.** `validationActions` `Deny` denies; `Warn` and `Audit` only
//!   log. A denial answers `<resource> "<name>" is forbidden:
//!   ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied
//!   request: <message>`, as the real server does.
//!
//! Not supported, and refused when a file uses them (never silently ignored):
//! `paramKind`/`paramRef`, `auditAnnotations`, non-empty `namespaceSelector` or
//! `objectSelector`, and the `authorizer` variable. Expressions are not
//! type-checked against the resource's schema as the real server does (CEL
//! here is dynamically typed): a field the cluster's schema lacks, or a
//! mismatch of types, is found by a real API server only.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use cel::{Context, Env, Program};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::error::{ApiError, ServerError};

/// A write as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST, or an apply patch that creates.
    Create,
    /// PUT or PATCH.
    Update,
    /// DELETE.
    Delete,
}

impl Operation {
    /// `CREATE`, `UPDATE`, `DELETE`, as `request.operation` spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// One request to admit.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What is done.
    pub operation: Operation,
    /// API group, `""` for core.
    pub group: &'a str,
    /// API version, e.g. `v1`.
    pub version: &'a str,
    /// The object's kind, e.g. `Node`.
    pub kind: &'a str,
    /// Plural resource, e.g. `nodes`.
    pub resource: &'a str,
    /// `""`, or e.g. `status`.
    pub subresource: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// `""` for cluster-scoped objects.
    pub namespace: &'a str,
    /// Who asks.
    pub user: &'a UserInfo,
    /// The object as it would be stored (None for DELETE).
    pub object: Option<&'a Value>,
    /// The stored object (None for CREATE).
    pub old_object: Option<&'a Value>,
}

/// Why a request was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The policy's name.
    pub policy: String,
    /// The binding's name.
    pub binding: String,
    /// The validation's message (or the evaluation error).
    pub message: String,
    /// `Forbidden`, `Invalid`, `Unauthorized`, `RequestEntityTooLarge`.
    pub reason: &'static str,
    /// The HTTP code that reason maps to.
    pub code: u16,
    /// True when an expression failed to evaluate (and `failurePolicy: Fail`
    /// turned that into a denial) rather than evaluating to false.
    pub error: bool,
}

impl Denial {
    /// The text after `is forbidden: ` in the real server's answer.
    #[must_use]
    pub fn full_message(&self) -> String {
        format!(
            "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {}",
            self.policy, self.binding, self.message
        )
    }

    /// The API error the server answers with.
    #[must_use]
    pub fn to_api_error(&self, request: &Request<'_>) -> ApiError {
        let resource = if request.group.is_empty() {
            request.resource.to_owned()
        } else {
            format!("{}.{}", request.resource, request.group)
        };
        ApiError::AdmissionDenied {
            resource,
            name: request.name.to_owned(),
            code: self.code,
            reason: self.reason,
            message: self.full_message(),
        }
    }
}

// ---------------------------------------------------------------------------
// The objects as files carry them. Unknown fields are refused, so a policy
// using something the fake does not implement fails to load.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Value,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    api_versions: Vec<String>,
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    scope: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchResources {
    #[serde(default)]
    resource_rules: Vec<Rule>,
    #[serde(default)]
    exclude_resource_rules: Vec<Rule>,
    namespace_selector: Option<Value>,
    object_selector: Option<Value>,
    /// Equivalent or Exact: the fake serves each resource under one version only.
    match_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedExpression {
    name: String,
    expression: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValidationSpec {
    expression: String,
    message: Option<String>,
    message_expression: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpec {
    failure_policy: Option<String>,
    match_constraints: MatchResources,
    #[serde(default)]
    match_conditions: Vec<NamedExpression>,
    #[serde(default)]
    variables: Vec<NamedExpression>,
    #[serde(default)]
    validations: Vec<ValidationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BindingSpec {
    policy_name: String,
    validation_actions: Vec<String>,
    match_resources: Option<MatchResources>,
}

// ---------------------------------------------------------------------------
// Compiled form.

struct Expression {
    source: String,
    program: Program,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl Expression {
    fn compile(env: &Env, source: &str, what: &str) -> Result<Self, String> {
        let program = env
            .compile(source)
            .map_err(|e| format!("{what}: {source:?} does not compile: {e}"))?;
        if program.references().has_variable("authorizer") {
            return Err(format!(
                "{what}: the authorizer variable is not supported by the fake"
            ));
        }
        Ok(Self {
            source: source.to_owned(),
            program,
        })
    }
}

#[derive(Debug)]
struct Validation {
    expression: Expression,
    message: Option<String>,
    message_expression: Option<Expression>,
    reason: &'static str,
}

#[derive(Debug)]
struct Policy {
    name: String,
    fail_closed: bool,
    constraints: MatchResources,
    match_conditions: Vec<(String, Expression)>,
    variables: Vec<(String, Expression)>,
    validations: Vec<Validation>,
}

#[derive(Debug)]
struct Binding {
    name: String,
    policy: Arc<Policy>,
    deny: bool,
    match_resources: Option<MatchResources>,
}

/// A set of policies and bindings.
pub struct Policies {
    env: Arc<Env>,
    policies: BTreeMap<String, Arc<Policy>>,
    bindings: Vec<Binding>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            env: Arc::new(Env::stdlib()),
            policies: BTreeMap::new(),
            bindings: Vec::new(),
        }
    }
}

fn reason_code(reason: Option<&str>) -> Result<(&'static str, u16), String> {
    // The reasons a validation may name, and the codes the real server maps
    // them to; none means Invalid.
    match reason {
        None | Some("Invalid") => Ok(("Invalid", 422)),
        Some("Forbidden") => Ok(("Forbidden", 403)),
        Some("Unauthorized") => Ok(("Unauthorized", 401)),
        Some("RequestEntityTooLarge") => Ok(("RequestEntityTooLarge", 413)),
        Some(other) => Err(format!(
            "validation reason {other:?} is not one Kubernetes allows"
        )),
    }
}

fn check_match(m: &MatchResources, what: &str) -> Result<(), String> {
    let non_empty = |s: &Option<Value>| {
        s.as_ref()
            .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
    };
    if non_empty(&m.namespace_selector) || non_empty(&m.object_selector) {
        return Err(format!(
            "{what}: namespaceSelector and objectSelector are not supported by the fake"
        ));
    }
    if let Some(p) = &m.match_policy
        && p != "Equivalent"
        && p != "Exact"
    {
        return Err(format!("{what}: unknown matchPolicy {p:?}"));
    }
    Ok(())
}

impl Policies {
    /// Parses ValidatingAdmissionPolicies and their bindings from YAML (any
    /// number of documents; empty ones are skipped).
    ///
    /// # Errors
    /// A message for bad YAML, another kind of object, an expression that
    /// does not compile, a feature the fake does not implement, or a binding
    /// naming no policy.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut policies = Self::default();
        policies.add(text)?;
        Ok(policies)
    }

    /// Adds the policies and bindings of one more YAML text. Bindings may
    /// name policies of earlier texts.
    ///
    /// # Errors
    /// As [`Policies::parse`].
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let mut documents = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
            if value.is_null() {
                continue;
            }
            let doc: Document =
                serde_json::from_value(value).map_err(|e| format!("document {}: {e}", i + 1))?;
            if doc.api_version != "admissionregistration.k8s.io/v1" {
                return Err(format!(
                    "{} {}: expected apiVersion admissionregistration.k8s.io/v1, got {}",
                    doc.kind, doc.metadata.name, doc.api_version
                ));
            }
            documents.push(doc);
        }
        // Policies first, so a binding may come before its policy in a file.
        let mut pending = Vec::new();
        for doc in documents {
            match doc.kind.as_str() {
                "ValidatingAdmissionPolicy" => {
                    let policy = self.compile_policy(&doc.metadata.name, doc.spec)?;
                    self.policies.insert(policy.name.clone(), Arc::new(policy));
                }
                "ValidatingAdmissionPolicyBinding" => pending.push(doc),
                other => {
                    return Err(format!(
                        "{}: expected a ValidatingAdmissionPolicy or a binding, got {other}",
                        doc.metadata.name
                    ));
                }
            }
        }
        for doc in pending {
            let what = format!("ValidatingAdmissionPolicyBinding {}", doc.metadata.name);
            let spec: BindingSpec =
                serde_json::from_value(doc.spec).map_err(|e| format!("{what}: {e}"))?;
            let policy = self
                .policies
                .get(&spec.policy_name)
                .cloned()
                .ok_or_else(|| format!("{what}: no policy {}", spec.policy_name))?;
            if spec.validation_actions.is_empty()
                || spec
                    .validation_actions
                    .iter()
                    .any(|a| !["Deny", "Warn", "Audit"].contains(&a.as_str()))
            {
                return Err(format!(
                    "{what}: validationActions must be some of Deny, Warn, Audit: {:?}",
                    spec.validation_actions
                ));
            }
            if let Some(m) = &spec.match_resources {
                check_match(m, &what)?;
            }
            self.bindings.push(Binding {
                name: doc.metadata.name,
                policy,
                deny: spec.validation_actions.iter().any(|a| a == "Deny"),
                match_resources: spec.match_resources,
            });
        }
        Ok(())
    }

    fn compile_policy(&self, name: &str, spec: Value) -> Result<Policy, String> {
        let what = format!("ValidatingAdmissionPolicy {name}");
        let spec: PolicySpec = serde_json::from_value(spec).map_err(|e| format!("{what}: {e}"))?;
        check_match(&spec.match_constraints, &what)?;
        let fail_closed = match spec.failure_policy.as_deref() {
            None | Some("Fail") => true,
            Some("Ignore") => false,
            Some(other) => return Err(format!("{what}: unknown failurePolicy {other:?}")),
        };
        let named = |list: Vec<NamedExpression>, part: &str| {
            list.into_iter()
                .map(|n| {
                    let e = Expression::compile(
                        &self.env,
                        &n.expression,
                        &format!("{what}: {part} {}", n.name),
                    )?;
                    Ok((n.name, e))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let match_conditions = named(spec.match_conditions, "matchCondition")?;
        let variables = named(spec.variables, "variable")?;
        let validations = spec
            .validations
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let part = format!("{what}: validation {}", i + 1);
                let (reason, _) =
                    reason_code(v.reason.as_deref()).map_err(|e| format!("{part}: {e}"))?;
                Ok(Validation {
                    expression: Expression::compile(&self.env, &v.expression, &part)?,
                    message: v.message.map(|m| m.trim().to_owned()),
                    message_expression: v
                        .message_expression
                        .map(|m| Expression::compile(&self.env, &m, &format!("{part} message")))
                        .transpose()?,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if validations.is_empty() {
            return Err(format!("{what}: no validations"));
        }
        Ok(Policy {
            name: name.to_owned(),
            fail_closed,
            constraints: spec.match_constraints,
            match_conditions,
            variables,
            validations,
        })
    }

    /// Reads and parses policy files, in order.
    ///
    /// # Errors
    /// [`ServerError::ConfigFile`] naming the file.
    pub fn load(paths: &[PathBuf]) -> Result<Self, ServerError> {
        let mut policies = Self::default();
        for path in paths {
            let error = |message| ServerError::ConfigFile {
                path: path.clone(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
            policies.add(&text).map_err(error)?;
        }
        Ok(policies)
    }

    /// True when nothing is bound: every request is admitted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Admits or denies one request: the first denial of a binding with the
    /// `Deny` action, in the order the bindings were loaded.
    ///
    /// # Errors
    /// The [`Denial`].
    pub fn validate(&self, request: &Request<'_>) -> Result<(), Denial> {
        if self.bindings.is_empty() {
            return Ok(());
        }
        let activation = Activation::new(request);
        for binding in &self.bindings {
            let policy = &binding.policy;
            if !matches(&policy.constraints, request)
                || binding
                    .match_resources
                    .as_ref()
                    .is_some_and(|m| !matches(m, request))
            {
                continue;
            }
            let Some((message, reason, error)) = self.evaluate(policy, &activation) else {
                continue;
            };
            let (reason, code) = reason_code(Some(reason)).unwrap_or(("Invalid", 422));
            let denial = Denial {
                policy: policy.name.clone(),
                binding: binding.name.clone(),
                message,
                reason,
                code,
                error,
            };
            if binding.deny {
                return Err(denial);
            }
            tracing::warn!(policy = %denial.policy, binding = %denial.binding, message = %denial.message,
                "admission policy would deny (Warn/Audit only)");
        }
        Ok(())
    }

    /// The first failure of `policy` on this request: (message, reason, was
    /// it an evaluation error), or None when it admits or does not apply.
    fn evaluate(
        &self,
        policy: &Policy,
        activation: &Activation,
    ) -> Option<(String, &'static str, bool)> {
        let base = activation.context(&self.env, &HashMap::new());
        let mut condition_error = None;
        for (name, condition) in &policy.match_conditions {
            match condition.program.execute(&base) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return None,
                Ok(other) => {
                    condition_error.get_or_insert(format!(
                        "matchCondition '{name}' evaluated to {other:?}, not a bool"
                    ));
                }
                Err(e) => {
                    condition_error
                        .get_or_insert(format!("matchCondition '{name}' resulted in error: {e}"));
                }
            }
        }
        if let Some(message) = condition_error {
            return policy.fail_closed.then_some((message, "Invalid", true));
        }
        let mut variables = HashMap::new();
        let mut failed = Vec::new();
        for (name, variable) in &policy.variables {
            let context = activation.context(&self.env, &variables);
            match variable.program.execute(&context) {
                Ok(value) => {
                    variables.insert(name.clone(), value);
                }
                Err(e) => failed.push(format!("variable '{name}': {e}")),
            }
        }
        let context = activation.context(&self.env, &variables);
        for validation in &policy.validations {
            let source = validation.expression.source.trim();
            match validation.expression.program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    return Some((message(validation, &context), validation.reason, false));
                }
                result => {
                    if !policy.fail_closed {
                        continue;
                    }
                    let error = match result {
                        Ok(other) => format!("evaluated to {other:?}, not a bool"),
                        Err(e) => e.to_string(),
                    };
                    let also = if failed.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", failed.join("; "))
                    };
                    return Some((
                        format!("expression '{source}' resulted in error: {error}{also}"),
                        "Invalid",
                        true,
                    ));
                }
            }
        }
        None
    }
}

/// The message of a failed validation, as the real server picks it.
fn message(validation: &Validation, context: &Context<'_, '_>) -> String {
    if let Some(expression) = &validation.message_expression
        && let Ok(cel::Value::String(text)) = expression.program.execute(context)
        && !text.trim().is_empty()
    {
        return text.trim().to_owned();
    }
    validation
        .message
        .clone()
        .unwrap_or_else(|| format!("failed expression: {}", validation.expression.source.trim()))
}

/// The values an expression sees, converted once per request.
struct Activation {
    object: cel::Value,
    old_object: cel::Value,
    request: cel::Value,
}

impl Activation {
    fn new(request: &Request<'_>) -> Self {
        let gvk = json!({"group": request.group, "version": request.version, "kind": request.kind});
        let gvr = json!({"group": request.group, "version": request.version, "resource": request.resource});
        let mut r = json!({
            "uid": "00000000-0000-4000-8000-000000000000",
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": request.name,
            "operation": request.operation.as_str(),
            "userInfo": request.user,
            "dryRun": false,
        });
        // Empty strings are left out, as the AdmissionRequest's JSON does.
        for (key, value) in [
            ("subResource", request.subresource),
            ("requestSubResource", request.subresource),
            ("namespace", request.namespace),
        ] {
            if !value.is_empty() {
                r[key] = json!(value);
            }
        }
        Self {
            object: request.object.map_or(cel::Value::Null, to_cel),
            old_object: request.old_object.map_or(cel::Value::Null, to_cel),
            request: to_cel(&r),
        }
    }

    fn context(
        &self,
        env: &Arc<Env>,
        variables: &HashMap<String, cel::Value>,
    ) -> Context<'static, 'static> {
        let mut context = Context::with_env(env.clone());
        context.add_variable_from_value("object", self.object.clone());
        context.add_variable_from_value("oldObject", self.old_object.clone());
        context.add_variable_from_value("request", self.request.clone());
        // No paramKind is supported, and Nodes have no namespace.
        context.add_variable_from_value("params", cel::Value::Null);
        context.add_variable_from_value("namespaceObject", cel::Value::Null);
        context.add_variable_from_value("variables", variables.clone());
        context
    }
}

/// JSON to CEL, with integers as `int` (as Kubernetes types them), not `uint`.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => n.as_i64().map_or_else(
            || {
                n.as_u64().map_or_else(
                    || cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                    cel::Value::UInt,
                )
            },
            cel::Value::Int,
        ),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<String, cel::Value>>()
            .into(),
    }
}

fn matches(m: &MatchResources, request: &Request<'_>) -> bool {
    m.resource_rules.iter().any(|r| rule_matches(r, request))
        && !m
            .exclude_resource_rules
            .iter()
            .any(|r| rule_matches(r, request))
}

fn rule_matches(rule: &Rule, request: &Request<'_>) -> bool {
    let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
    let resource = rule.resources.iter().any(|r| {
        if r == "*/*" {
            return true;
        }
        let (resource, sub) = r.split_once('/').unwrap_or((r, ""));
        (resource == "*" || resource == request.resource)
            && match sub {
                // "nodes" is the Node itself, not its subresources.
                "" => request.subresource.is_empty(),
                "*" => !request.subresource.is_empty(),
                s => s == request.subresource,
            }
    });
    let scope = match rule.scope.as_deref() {
        None | Some("*") => true,
        Some("Cluster") => request.namespace.is_empty(),
        Some("Namespaced") => !request.namespace.is_empty(),
        Some(_) => false,
    };
    any(&rule.api_groups, request.group)
        && any(&rule.api_versions, request.version)
        && any(&rule.operations, request.operation.as_str())
        && resource
        && scope
        && (rule.resource_names.is_empty() || rule.resource_names.iter().any(|n| n == request.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: b}
spec: {policyName: p, validationActions: [Deny]}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: ["v1"], operations: ["UPDATE"], resources: ["nodes/status"]}
  matchConditions:
    - {name: only-bob, expression: "request.userInfo.username == 'bob'"}
  variables:
    - {name: a, expression: "object.metadata.name"}
    - {name: b, expression: "variables.a + '!'"}
    - {name: broken, expression: "object.nope.deeper"}
  validations:
    - expression: "variables.b == 'n1!'"
      messageExpression: "'not n1: ' + variables.a"
      reason: Forbidden
    - expression: "variables.broken == 1"
"#;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            username: name.into(),
            ..UserInfo::default()
        }
    }

    fn request<'a>(user: &'a UserInfo, sub: &'a str, object: &'a Value) -> Request<'a> {
        Request {
            operation: Operation::Update,
            group: "",
            version: "v1",
            kind: "Node",
            resource: "nodes",
            subresource: sub,
            name: "n",
            namespace: "",
            user,
            object: Some(object),
            old_object: Some(object),
        }
    }

    #[test]
    fn conditions_variables_messages_and_errors() {
        let policies = Policies::parse(POLICY).unwrap();
        let bob = user("bob");
        let n2 = json!({"metadata": {"name": "n2"}});
        let denial = policies
            .validate(&request(&bob, "status", &n2))
            .unwrap_err();
        assert_eq!(denial.message, "not n1: n2");
        assert_eq!(
            (denial.code, denial.reason, denial.error),
            (403, "Forbidden", false)
        );
        assert_eq!(
            denial.full_message(),
            "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: not n1: n2"
        );
        // Another user: the match condition skips the policy.
        assert!(
            policies
                .validate(&request(&user("alice"), "status", &n2))
                .is_ok()
        );
        // The main resource is not matched by "nodes/status".
        assert!(policies.validate(&request(&bob, "", &n2)).is_ok());
        // The first validation passes; the second uses a variable that failed.
        let n1 = json!({"metadata": {"name": "n1"}});
        let denial = policies
            .validate(&request(&bob, "status", &n1))
            .unwrap_err();
        assert!(denial.error, "{denial:?}");
        assert_eq!((denial.code, denial.reason), (422, "Invalid"));
        assert!(
            denial
                .message
                .starts_with("expression 'variables.broken == 1' resulted in error:"),
            "{}",
            denial.message
        );
        // Ignore turns errors into admission.
        let ignoring = POLICY.replace(
            "  matchConstraints:",
            "  failurePolicy: Ignore\n  matchConstraints:",
        );
        let policies = Policies::parse(&ignoring).unwrap();
        assert!(policies.validate(&request(&bob, "status", &n1)).is_ok());
    }

    #[test]
    fn unsupported_features_are_refused() {
        for (from, to) in [
            (
                "  matchConstraints:",
                "  paramKind: {apiVersion: v1, kind: ConfigMap}\n  matchConstraints:",
            ),
            (
                "    resourceRules:",
                "    objectSelector: {matchLabels: {a: b}}\n    resourceRules:",
            ),
            (
                "\"variables.broken == 1\"",
                "\"authorizer.group('').resource('nodes').check('get').allowed()\"",
            ),
            ("[Deny]", "[]"),
            ("policyName: p", "policyName: q"),
            ("reason: Forbidden", "reason: Teapot"),
            ("\"object.metadata.name\"", "\"object.metadata.name +\""),
        ] {
            let text = POLICY.replace(from, to);
            assert_ne!(text, POLICY, "{from}");
            assert!(Policies::parse(&text).is_err(), "{to} must be refused");
        }
        // An empty selector matches everything, as on a real server.
        let empty = POLICY.replace(
            "    resourceRules:",
            "    namespaceSelector: {}\n    resourceRules:",
        );
        assert!(Policies::parse(&empty).is_ok());
    }

    #[test]
    fn resource_rules() {
        let u = user("u");
        let obj = json!({});
        let rule = |resources: &[&str]| Rule {
            api_groups: vec![String::new()],
            api_versions: vec!["*".into()],
            operations: vec!["*".into()],
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            ..Rule::default()
        };
        let main = request(&u, "", &obj);
        let status = request(&u, "status", &obj);
        for (resources, on_main, on_status) in [
            (&["nodes"][..], true, false),
            (&["nodes/status"], false, true),
            (&["nodes/*"], false, true),
            (&["nodes", "nodes/*"], true, true),
            (&["*"], true, false),
            (&["*/status"], false, true),
            (&["*/*"], true, true),
            (&["pods"], false, false),
        ] {
            let r = rule(resources);
            assert_eq!(rule_matches(&r, &main), on_main, "{resources:?} on nodes");
            assert_eq!(
                rule_matches(&r, &status),
                on_status,
                "{resources:?} on nodes/status"
            );
        }
        let mut named = rule(&["nodes"]);
        named.resource_names = vec!["other".into()];
        assert!(!rule_matches(&named, &main));
        let mut scoped = rule(&["nodes"]);
        scoped.scope = Some("Namespaced".into());
        assert!(!rule_matches(&scoped, &main));
    }
}
