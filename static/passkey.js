// Passkeys: the browser's part of a WebAuthn ceremony. A form marked data-passkey asks
// its data-start address for the options (with the form's csrf), lets the browser create
// or use a credential, puts the answer in the form's "credential" field as JSON, and
// submits the form. Sections marked data-needs-webauthn show only where the browser can.
(function () {
  "use strict";
  if (!window.PublicKeyCredential || !navigator.credentials) {
    return;
  }
  document.querySelectorAll("[data-needs-webauthn]").forEach(function (section) {
    section.hidden = false;
  });

  function bytes(base64url) {
    var base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    var binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    var out = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      out[i] = binary.charCodeAt(i);
    }
    return out.buffer;
  }

  function base64url(buffer) {
    var view = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < view.length; i++) {
      binary += String.fromCharCode(view[i]);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function credentialIds(list) {
    (list || []).forEach(function (item) {
      item.id = bytes(item.id);
    });
  }

  function registered(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: base64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: base64url(response.attestationObject),
        clientDataJSON: base64url(response.clientDataJSON),
        transports: response.getTransports ? response.getTransports() : undefined
      },
      clientExtensionResults: credential.getClientExtensionResults()
    };
  }

  function asserted(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: base64url(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: base64url(response.authenticatorData),
        clientDataJSON: base64url(response.clientDataJSON),
        signature: base64url(response.signature),
        userHandle: response.userHandle ? base64url(response.userHandle) : null
      },
      clientExtensionResults: credential.getClientExtensionResults()
    };
  }

  function ceremony(form) {
    var body = new URLSearchParams();
    body.set("csrf", form.elements.csrf.value);
    return fetch(form.dataset.start, { method: "POST", body: body, credentials: "same-origin" })
      .then(function (answer) {
        if (!answer.ok) {
          throw new Error("start refused: " + answer.status);
        }
        return answer.json();
      })
      .then(function (options) {
        var publicKey = options.publicKey;
        publicKey.challenge = bytes(publicKey.challenge);
        if (form.dataset.passkey === "register") {
          publicKey.user.id = bytes(publicKey.user.id);
          credentialIds(publicKey.excludeCredentials);
          return navigator.credentials.create({ publicKey: publicKey }).then(registered);
        }
        credentialIds(publicKey.allowCredentials);
        return navigator.credentials.get({ publicKey: publicKey }).then(asserted);
      });
  }

  document.querySelectorAll("form[data-passkey]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var error = form.querySelector(".passkey-error");
      if (error) {
        error.hidden = true;
      }
      ceremony(form)
        .then(function (answer) {
          form.elements.credential.value = JSON.stringify(answer);
          form.submit();
        })
        .catch(function () {
          if (error) {
            error.hidden = false;
          }
        });
    });
  });
})();
