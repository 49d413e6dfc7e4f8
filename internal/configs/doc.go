// Package configs loads and validates the configuration directory: one YAML
// file per configuration and a templates/ folder.
//
// Load checks everything that can be checked without objects: YAML syntax,
// unknown fields, names, modes, owners and groups, command placeholders,
// template files and their syntax, depends_on references and cycles, and
// output paths claimed twice. Every error names the file it comes from, and
// Load reports all of them at once so an operator can fix a directory in one
// pass. A Set that Load returns is valid and immutable.
package configs
