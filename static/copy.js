// The Copy button of a new app password: the password without its spaces goes to the
// clipboard, and the button says so. The only script of the portal.
document.getElementById("copy").addEventListener("click", function () {
  var button = this;
  var text = document.getElementById("new-app-password").dataset.compact;
  navigator.clipboard.writeText(text).then(function () {
    button.textContent = button.dataset.copied;
  });
});
